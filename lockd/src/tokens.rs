//! Where fencing tokens start, so that they never go backwards across a restart.
//!
//! Two sources, whichever is higher:
//! - the clock: a run starts its tokens above the wall-clock time in microseconds. That
//!   is enough as long as the clock does not step back across the restart and the run
//!   before issued on average fewer than one token per microsecond since it started
//!   (a million grants a second, sustained from start; lockd does a few hundred thousand
//!   on a fast machine).
//! - with `--state-dir`, a file holding a ceiling that every issued token stays below:
//!   the next run starts above it, whatever the clock says. The ceiling is raised well
//!   ahead of the tokens (one small fsync'd write per [`RESERVE`] tokens), so a crash
//!   can never leave a token above the recorded ceiling.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// How far ahead of the last token the recorded ceiling is kept. A single operation
/// grants at most `--max-waiters` + 1 tokens, far less than half of this.
pub const RESERVE: u64 = 1 << 26;

const FILE_NAME: &str = "fencing-ceiling";

#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("cannot use --state-dir {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("{path} does not hold a token ceiling (a decimal number): {content:?}")]
    Corrupt { path: PathBuf, content: String },
    #[error("cannot record the token ceiling in {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The recorded ceiling, when there is a state directory.
#[derive(Debug)]
pub struct TokenStore {
    path: Option<PathBuf>,
    ceiling: u64,
}

impl TokenStore {
    /// Opens the store and returns it with the token every new token must exceed.
    pub fn open(state_dir: Option<&Path>) -> Result<(TokenStore, u64), TokenStoreError> {
        let clock = clock_micros();
        let Some(dir) = state_dir else {
            return Ok((TokenStore { path: None, ceiling: 0 }, clock));
        };
        fs::create_dir_all(dir).map_err(|source| TokenStoreError::Dir { dir: dir.into(), source })?;
        let path = dir.join(FILE_NAME);
        let recorded = match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| TokenStoreError::Corrupt { path: path.clone(), content: text.chars().take(64).collect() })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(source) => return Err(TokenStoreError::Dir { dir: dir.into(), source }),
        };
        let start_after = clock.max(recorded);
        let mut store = TokenStore { path: Some(path), ceiling: 0 };
        store.record(start_after.saturating_add(RESERVE))?;
        Ok((store, start_after))
    }

    /// Keeps the recorded ceiling ahead of `last_token`; a no-op without a state dir and
    /// for all but one call in [`RESERVE`] / 2 tokens.
    pub fn keep_ahead_of(&mut self, last_token: u64) -> Result<(), TokenStoreError> {
        if self.path.is_none() || last_token.saturating_add(RESERVE / 2) < self.ceiling {
            return Ok(());
        }
        self.record(last_token.saturating_add(RESERVE))
    }

    /// Writes `ceiling` durably: a temporary file, fsync, rename, fsync of the directory.
    fn record(&mut self, ceiling: u64) -> Result<(), TokenStoreError> {
        let Some(path) = &self.path else { return Ok(()) };
        let write = || -> io::Result<()> {
            let tmp = path.with_extension("tmp");
            let mut file = fs::File::create(&tmp)?;
            writeln!(file, "{ceiling}")?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent() {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|source| TokenStoreError::Write { path: path.clone(), source })?;
        self.ceiling = ceiling;
        Ok(())
    }
}

fn clock_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_state_dir_tokens_start_above_the_clock() {
        let before = clock_micros();
        let (_, start) = TokenStore::open(None).unwrap();
        assert!(start >= before);
    }

    #[test]
    fn a_recorded_ceiling_wins_over_the_clock_and_is_kept_ahead() {
        let dir = std::env::temp_dir().join(format!("lockd-tokens-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let far = u64::MAX / 4;
        fs::write(dir.join(FILE_NAME), format!("{far}\n")).unwrap();
        let (mut store, start) = TokenStore::open(Some(&dir)).unwrap();
        assert_eq!(start, far);
        let recorded = || fs::read_to_string(dir.join(FILE_NAME)).unwrap().trim().parse::<u64>().unwrap();
        assert_eq!(recorded(), far + RESERVE);
        store.keep_ahead_of(far + 10).unwrap();
        assert_eq!(recorded(), far + RESERVE, "no write while far ahead");
        store.keep_ahead_of(far + RESERVE / 2 + 1).unwrap();
        assert_eq!(recorded(), far + RESERVE / 2 + 1 + RESERVE);
        fs::write(dir.join(FILE_NAME), "junk").unwrap();
        assert!(matches!(TokenStore::open(Some(&dir)), Err(TokenStoreError::Corrupt { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
