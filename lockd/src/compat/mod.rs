//! Front ends for the protocols of the lock servers lockd replaces, so their existing
//! clients keep working: each is a thin translation onto the same lock table, through the
//! same door ([`crate::state::State`]) the native commands use, so a key locked through
//! one protocol is locked for all. docs/COMPAT.md describes them.
//!
//! - [`elock`]: eLock's protocol (`--elock-listen`).
//! - [`mediawiki`]: MediaWiki's LockServerDaemon (`--mediawiki-listen`).
//!
//! Both are line protocols with bounded lines, and replies written with the same
//! backpressure as native connections: a client that does not read its replies stops
//! being read. [`LineConnection`] serves protocols whose requests never wait.

pub mod elock;
pub mod mediawiki;

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;
use crate::stream::{ClientStream, ReadHalf};

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Native,
    ELock,
    MediaWiki,
}

/// A line-protocol connection: bounded lines in, replies out through an [`Outbox`].
pub struct LineConnection {
    lines: FramedRead<ReadHalf, LinesCodec>,
    outbox: Arc<Outbox>,
}

impl LineConnection {
    pub fn new(stream: TcpStream, max_line: usize) -> Self {
        let (reader, writer) = ClientStream::from(stream).into_split();
        LineConnection { lines: FramedRead::new(reader, LinesCodec::new_with_max_length(max_line)), outbox: Arc::new(Outbox::new(writer)) }
    }

    /// Runs `handle` on every line (LF or CRLF) and sends what it returns, until the
    /// client closes, sends a line longer than the limit or not UTF-8, or `shutdown`.
    /// Lines already received are handled together and answered in one write.
    pub async fn serve_lines(&mut self, shutdown: &CancellationToken, mut handle: impl FnMut(&str) -> String) -> &'static str {
        let mut out = String::new();
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return "server shutting down",
                line = self.lines.next() => line,
            };
            let mut next = Some(first);
            while let Some(line) = next {
                match line {
                    None => return "closed by client",
                    Some(Ok(line)) => out.push_str(&handle(&line)),
                    Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                        self.outbox.send(b"BAD_FORMAT line too long\r\n");
                        return "line too long";
                    }
                    Some(Err(LinesCodecError::Io(_))) => return "read error or a line that is not UTF-8",
                }
                next = self.lines.next().now_or_never();
            }
            self.outbox.send(out.as_bytes());
            out.clear();
            if self.outbox.has_queued() {
                tokio::select! {
                    flushed = self.outbox.flush() => if flushed.is_err() { return "write error" },
                    _ = shutdown.cancelled() => return "server shutting down",
                }
            }
        }
    }
}
