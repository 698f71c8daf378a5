//! Settings from the `--config` TOML file and the environment, for every flag of
//! [`Config`]: the file's keys are the flags' long names (`max-clients = 500`), the
//! variables `LOCKD_` and the long name in capitals (`LOCKD_MAX_CLIENTS`). Both are derived
//! from clap's own description of the flags, so a flag added to `Config` is in the file and
//! the environment with no more code. Precedence: flags, then environment, then file, then
//! built-in defaults — the file's values become clap's defaults, below what clap reads
//! itself.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use clap::builder::Resettable;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::Config;

/// Flags about where settings come from or what to do with them, not settings themselves.
const NOT_SETTINGS: &[&str] = &["config", "check_config", "help", "version"];

/// Shown instead of a secret's value.
const REDACTED: &str = "<redacted>";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Flags(#[from] clap::Error),
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not valid TOML: {source}", .path.display())]
    Toml { path: PathBuf, source: toml::de::Error },
    #[error("{}: unknown key `{key}` (the keys are lockd's long flags without the dashes, e.g. max-clients; see lockd --help)", .path.display())]
    UnknownKey { path: PathBuf, key: String },
    #[error("{}: `{key}`: {reason}", .path.display())]
    BadValue { path: PathBuf, key: String, reason: String },
    #[error("{} with the flags and environment: {reason}", .path.display())]
    BadCombination { path: PathBuf, reason: String },
}

/// The settings in force and where each came from.
pub struct Settings {
    pub config: Config,
    matches: ArgMatches,
    command: Command,
    /// The ids of the settings the file gave (clap sees them as defaults).
    from_file: HashSet<String>,
}

impl Settings {
    /// Reads the command line (`args`, program name first), the environment, and the
    /// `--config` file (or `LOCKD_CONFIG`) they name.
    pub fn load<I, T>(args: I) -> Result<Settings, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut command = command();
        let mut from_file = HashSet::new();
        let mut file = None;
        if let Some(path) = config_path(&command, &args) {
            let defaults = read_file(&command, &path)?;
            from_file = defaults.keys().cloned().collect();
            // One pass over the arguments keeps them in --help order. clap would not count
            // the file's values for what flags require or exclude: `check_combination` does.
            let with_file = command.clone().mut_args(|arg| {
                let arg = arg.requires(Resettable::Reset).conflicts_with(Resettable::Reset);
                match defaults.get(arg.get_id().as_str()) {
                    Some(values) => arg.default_values(values),
                    None => arg,
                }
            });
            file = Some((std::mem::replace(&mut command, with_file), path, defaults));
        }
        let matches = command.try_get_matches_from_mut(&args)?;
        if let Some((without_file, path, defaults)) = file {
            check_combination(without_file, &defaults, &args).map_err(|reason| LoadError::BadCombination { path, reason })?;
        }
        let config = Config::from_arg_matches(&matches)?;
        Ok(Settings { config, matches, command, from_file })
    }

    /// Where the setting with clap id `id` came from (a file's value counts as a default).
    pub fn source(&self, id: &str) -> Option<ValueSource> {
        self.matches.value_source(id)
    }

    /// The text the setting with clap id `id` was given as (a path for the key files).
    pub fn raw(&self, id: &str) -> Option<String> {
        self.matches.get_raw(id)?.next().map(|v| v.to_string_lossy().into_owned())
    }

    /// Every setting by long name: its values (none when unset) and where they came from.
    fn values(&self) -> BTreeMap<String, (Vec<String>, &'static str)> {
        settings(&self.command)
            .map(|arg| {
                let id = arg.get_id().as_str();
                let values = self.matches.get_raw(id).map_or_else(Vec::new, |raw| raw.map(|v| v.to_string_lossy().into_owned()).collect());
                let source = match self.matches.value_source(id) {
                    Some(ValueSource::CommandLine) => "flag",
                    Some(ValueSource::EnvVariable) => "environment",
                    Some(ValueSource::DefaultValue) if self.from_file.contains(id) => "file",
                    _ => "default",
                };
                (long(arg).to_owned(), (values, source))
            })
            .collect()
    }

    /// The settings as a TOML file lockd accepts, secrets redacted, each line saying where
    /// its value came from.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("# lockd's effective settings (lockd --check-config)\n");
        let values = self.values();
        for arg in settings(&self.command) {
            let (raw, source) = &values[long(arg)];
            let line = match to_toml_value(arg, raw) {
                None => format!("# {} is not set", long(arg)),
                Some(_) if arg.is_hide_env_values_set() => format!("{} = \"{REDACTED}\"  # {source}", long(arg)),
                Some(value) => format!("{} = {value}  # {source}", long(arg)),
            };
            let _ = writeln!(out, "{line}");
        }
        out
    }

    /// The long names of the settings whose values differ from `other`'s.
    pub fn changed(&self, other: &Settings) -> Vec<String> {
        let (mine, theirs) = (self.values(), other.values());
        mine.into_iter().filter(|(name, (values, _))| theirs.get(name).map(|t| &t.0) != Some(values)).map(|(name, _)| name).collect()
    }
}

/// The clap command of [`Config`], each setting also read from its `LOCKD_*` variable.
pub fn command() -> Command {
    Config::command().mut_args(|arg| {
        if !is_setting(&arg) || arg.get_env().is_some() {
            return arg;
        }
        let variable = format!("LOCKD_{}", long(&arg).to_uppercase().replace('-', "_"));
        arg.env(variable)
    })
}

/// The arguments that are settings (in the file and the environment), in `--help` order.
pub fn settings(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|arg| is_setting(arg))
}

fn is_setting(arg: &Arg) -> bool {
    arg.get_long().is_some() && !NOT_SETTINGS.contains(&arg.get_id().as_str())
}

fn long(arg: &Arg) -> &str {
    arg.get_long().expect("settings have a long flag")
}

/// The `--config` path, from a first pass that ignores every other error (the second
/// pass, with the file's values, reports them).
fn config_path(command: &Command, args: &[OsString]) -> Option<PathBuf> {
    let matches = command.clone().ignore_errors(true).try_get_matches_from(args).ok()?;
    matches.get_one::<PathBuf>("config").cloned()
}

/// The file's settings as (arg id, values), each value checked by the flag's own parser.
fn read_file(command: &Command, path: &Path) -> Result<BTreeMap<String, Vec<String>>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    let table: toml::Table = text.parse().map_err(|source| LoadError::Toml { path: path.to_owned(), source })?;
    let mut defaults = BTreeMap::new();
    for (key, value) in table {
        let Some(arg) = settings(command).find(|arg| long(arg) == key) else {
            return Err(LoadError::UnknownKey { path: path.to_owned(), key });
        };
        let bad = |reason: String| LoadError::BadValue { path: path.to_owned(), key: key.clone(), reason };
        let values = file_values(arg, &value).map_err(bad)?;
        check_values(arg, &values).map_err(bad)?;
        defaults.insert(arg.get_id().to_string(), values);
    }
    Ok(defaults)
}

/// Runs the flag's own parser on each value, as if given on the command line.
fn check_values(arg: &Arg, values: &[String]) -> Result<(), String> {
    if !arg.get_action().takes_values() {
        return match values {
            [v] if v == "true" || v == "false" => Ok(()),
            _ => Err("must be true or false".into()),
        };
    }
    // Alone in a command of its own: what it requires or conflicts with is not there.
    let alone = arg.clone().requires(Resettable::Reset).conflicts_with(Resettable::Reset).env(None).required(false);
    let mut command = Command::new("lockd").arg(alone);
    for v in values {
        command.try_get_matches_from_mut(["lockd".to_owned(), format!("--{}={v}", long(arg))]).map_err(|e| clap_reason(&e))?;
    }
    Ok(())
}

/// Checks what the flags require of each other (`tls-cert` needs `tls-key`, one auth key
/// source at a time) with the file's settings counted: they are given as flags before the
/// real ones.
fn check_combination(command: Command, defaults: &BTreeMap<String, Vec<String>>, args: &[OsString]) -> Result<(), String> {
    let mut argv: Vec<OsString> = args.iter().take(1).cloned().collect();
    for arg in settings(&command) {
        let Some(values) = defaults.get(arg.get_id().as_str()) else { continue };
        match arg.get_action().takes_values() {
            true => argv.extend(values.iter().map(|v| format!("--{}={v}", long(arg)).into())),
            false if values == &["true"] => argv.push(format!("--{}", long(arg)).into()),
            false => {}
        }
    }
    argv.extend(args.iter().skip(1).cloned());
    // A flag given in the file and again on the command line is an override, not a repeat.
    command.args_override_self(true).try_get_matches_from(argv).map(drop).map_err(|e| clap_reason(&e))
}

/// A TOML value as the strings clap would get on the command line.
fn file_values(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    match value {
        toml::Value::Array(items) if takes_many(arg) => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => Err("takes one value, not a list".into()),
        toml::Value::Boolean(_) | toml::Value::String(_) | toml::Value::Integer(_) | toml::Value::Float(_) => Ok(vec![scalar(value)?]),
        _ => Err(format!("{value} is not a string, number, boolean or list")),
    }
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("{other} is not a string, number or boolean")),
    }
}

/// The TOML form of a setting's values: a list for repeatable flags, a boolean for
/// switches, a number where the text is one, else a string. `None` when unset.
fn to_toml_value(arg: &Arg, raw: &[String]) -> Option<toml::Value> {
    let typed = |v: &String| {
        if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            toml::Value::Boolean(v == "true")
        } else if let Ok(i) = v.parse::<i64>() {
            toml::Value::Integer(i)
        } else if v.chars().all(|c| c.is_ascii_digit() || c == '.') && v.parse::<f64>().is_ok() {
            toml::Value::Float(v.parse().unwrap_or_default())
        } else {
            toml::Value::String(v.clone())
        }
    };
    if takes_many(arg) {
        return Some(toml::Value::Array(raw.iter().map(typed).collect()));
    }
    raw.first().map(typed)
}

fn takes_many(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// What a flag's value parser said, without clap's "error:" and usage lines.
fn clap_reason(e: &clap::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => source.to_string(),
        // The message's first paragraph, before the usage lines.
        None => e.to_string().split("\n\n").next().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ").trim_start_matches("error: ").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TOML file in the temporary directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn arg(&self) -> String {
            self.0.display().to_string()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file(text: &str) -> TempFile {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("lockd-config-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn load(args: &[&str]) -> Result<Settings, LoadError> {
        Settings::load(["lockd"].iter().chain(args))
    }

    /// A value each setting's parser accepts, for the test that every flag is in the file.
    fn sample(arg: &Arg) -> toml::Value {
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            return toml::Value::Boolean(true);
        }
        let value_name = arg.get_value_names().and_then(|names| names.first()).map(|n| n.as_str());
        let text = match (arg.get_default_values().first(), value_name) {
            (Some(default), _) => default.to_string_lossy().into_owned(),
            (None, Some("ADDR")) => "127.0.0.1:1".to_owned(),
            (None, Some("ETCD_URLS")) => "etcd://127.0.0.1:2379".to_owned(),
            (None, Some("TOKEN" | "N")) => "1".to_owned(),
            // A non-empty file: key files are read as the flag is parsed.
            (None, Some("PATH" | "FILE" | "DIR")) => "/proc/self/exe".to_owned(),
            (None, _) => "sample".to_owned(),
        };
        let value = toml::Value::String(text);
        if takes_many(arg) {
            toml::Value::Array(vec![value])
        } else {
            value
        }
    }

    #[test]
    fn every_flag_is_accepted_in_the_file() {
        let command = command();
        let mut rejected = Vec::new();
        // Every long flag, not just `settings()`: a flag left out of those fails here.
        let flags = command.get_arguments().filter(|arg| !matches!(arg.get_long(), None | Some("config" | "check-config")));
        for arg in flags {
            let mut table = toml::Table::new();
            table.insert(long(arg).to_owned(), sample(arg));
            let f = file(&table.to_string());
            if let Err(e) = read_file(&command, &f.0) {
                rejected.push(format!("{}: {e}", long(arg)));
            }
        }
        assert!(settings(&command).count() > 30, "walks the real flags");
        assert!(rejected.is_empty(), "{rejected:#?}");
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        let command = command();
        for arg in settings(&command) {
            let variable = arg.get_env().unwrap_or_else(|| panic!("--{} has no variable", long(arg)));
            assert_eq!(variable.to_string_lossy(), format!("LOCKD_{}", long(arg).to_uppercase().replace('-', "_")));
        }
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let f = file("max-clients = 500\nmax-locks = 7\nallow = [\"10.0.0.0/8\", \"192.168.0.0/16\"]\ninsecure-no-auth = true\nlock-delay = 1.5\n");
        let s = load(&["--config", &f.arg(), "--max-locks", "9"]).unwrap();
        assert_eq!(s.config.max_clients, 500);
        assert_eq!(s.config.max_locks, 9);
        assert!(s.config.insecure_no_auth);
        assert_eq!(s.config.lock_delay, std::time::Duration::from_millis(1500));
        assert!(s.config.allows("192.168.1.1".parse().unwrap()) && !s.config.allows("127.0.0.1".parse().unwrap()));
        assert_eq!(s.config.max_frame, pklock_proto::DEFAULT_MAX_FRAME, "untouched settings keep their defaults");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
        let f = file("max-client = 5\n");
        let e = load(&["--config", &f.arg()]).err().unwrap().to_string();
        assert!(e.contains("unknown key `max-client`") && e.contains(&f.arg()), "{e}");
        let f = file("max-clients = \"many\"\n");
        let e = load(&["--config", &f.arg()]).err().unwrap().to_string();
        assert!(e.starts_with(&format!("{}: `max-clients`: ", f.arg())), "{e}");
        let f = file("listen = [\"127.0.0.1:1\"]\nmax-clients = [1, 2]\n");
        let e = load(&["--config", &f.arg()]).err().unwrap().to_string();
        assert!(e.contains("`max-clients`: takes one value"), "{e}");
        let f = file("tls-cert = \"/etc/lockd/cert.pem\"\n");
        let e = load(&["--config", &f.arg()]).err().unwrap().to_string();
        assert!(e.starts_with(&format!("{} with the flags and environment: ", f.arg())) && e.contains("--tls-key"), "{e}");
        assert!(load(&["--config", &f.arg(), "--tls-key", "/etc/lockd/key.pem"]).is_ok(), "a flag completes the file");
        let f = file("max-clients = 5\nallow = [\"10.0.0.0/8\"]\n");
        let s = load(&["--config", &f.arg(), "--max-clients", "6", "--allow", "10.1.0.0/16"]).unwrap();
        assert_eq!((s.config.max_clients, s.config.allow.len()), (6, 1), "flags replace the file's values");
        let f = file("auth-key = \"a\"\nauth-key-file = \"/proc/self/exe\"\n");
        let e = load(&["--config", &f.arg()]).err().unwrap().to_string();
        assert!(e.contains("cannot be used with"), "{e}");
        let f = file("config = \"/etc/other.toml\"\n");
        assert!(load(&["--config", &f.arg()]).err().unwrap().to_string().contains("unknown key `config`"));
        let e = load(&["--config", "/nonexistent/lockd.toml"]).err().unwrap().to_string();
        assert!(e.starts_with("cannot read /nonexistent/lockd.toml"), "{e}");
    }

    #[test]
    fn the_effective_settings_read_back_the_same_and_hide_secrets() {
        let f = file("max-clients = 500\nauth-key = \"hunter2\"\nallow = [\"10.0.0.0/8\"]\nlog-format = \"json\"\n");
        let s = load(&["--config", &f.arg(), "--max-locks", "9"]).unwrap();
        let shown = s.to_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("auth-key = \"<redacted>\"  # file"), "{shown}");
        assert!(shown.contains("max-clients = 500  # file"), "{shown}");
        assert!(shown.contains("max-locks = 9  # flag"), "{shown}");
        assert!(shown.contains("max-waiters = 1000000  # default"), "{shown}");
        assert!(shown.contains("# state-dir is not set"), "{shown}");
        let again = file(&shown.replace("\"<redacted>\"", "\"hunter2\""));
        let reread = load(&["--config", &again.arg()]).unwrap();
        assert!(reread.changed(&s).is_empty(), "{:?}", reread.changed(&s));
    }

    #[test]
    fn changed_names_the_settings_that_differ() {
        let a = load(&["--allow", "10.0.0.0/8"]).unwrap();
        let b = load(&["--allow", "10.0.0.0/8", "--max-locks", "3", "--log-level", "debug"]).unwrap();
        assert_eq!(b.changed(&a), ["log-level", "max-locks"]);
    }

    #[test]
    fn the_example_config_shows_every_setting_with_a_value_lockd_accepts() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/lockd.toml");
        let example = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = example.lines().filter_map(|l| l.strip_prefix('#').filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()))).map(|l| format!("{l}\n")).collect();
        let table: toml::Table = uncommented.parse().unwrap();
        let command = command();
        let missing: Vec<&str> = settings(&command).map(long).filter(|name| !table.contains_key(*name)).collect();
        assert!(missing.is_empty(), "packaging/lockd.toml lacks {missing:?}");
        // The key files are read as they are parsed, and the example's do not exist here.
        let readable: toml::Table = table.into_iter().filter(|(key, _)| !key.ends_with("auth-key-file")).collect();
        let f = file(&readable.to_string());
        read_file(&command, &f.0).unwrap();
    }
}
