//! One client connection: reads frames, runs their commands, writes the replies, and
//! when it ends for any reason releases every lock its owners held.
//!
//! A client cannot stall anyone else: what others send it (grants) never blocks them
//! (see [`Outbox`]), a client that does not read its replies only stops its own requests
//! from being read (backpressure), and a frame it starts must be finished within
//! `--frame-timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use pklock_proto::{ErrorBody, ErrorCode, FrameError};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::cmd::handle_frame;
use crate::codec::FrameDecoder;
use crate::outbox::Outbox;
use crate::state::{encode_error, Shared};
use crate::table::ConnId;

/// Read buffer a connection starts with; it grows for larger frames. Most requests are
/// well under this, and idle connections should cost little memory.
const INITIAL_READ_BUFFER: usize = 512;

/// A reply buffer that grew past this (a big `locks` listing) is given back afterwards.
const KEEP_BUFFER: usize = 64 * 1024;

/// Serves connection `conn` (already registered with [`Shared::connect`]) until the
/// client closes, breaks the protocol, or the server shuts down.
pub async fn serve(shared: Arc<Shared>, conn: ConnId, stream: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    debug!(conn, %peer, "connection opened");
    let registration = Registration { shared: shared.clone(), conn: Some(conn) };
    let (reader, writer) = stream.into_split();
    let outbox = Arc::new(Outbox::new(writer));
    let mut frames = FramedRead::with_capacity(reader, FrameDecoder::new(shared.config.max_frame), INITIAL_READ_BUFFER);
    let mut out = Vec::new();
    let mut authed = shared.config.auth_key.is_none();
    // Checks for a frame left half-sent; a quarter of the limit keeps the close within
    // 1.25 x --frame-timeout while idle connections rarely wake.
    let frame_timeout = shared.config.frame_timeout;
    let mut half_sent_check = interval((frame_timeout / 4).max(Duration::from_millis(10)));
    half_sent_check.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let why_closed = loop {
        let mut closing = None;
        // Replies the client said it would not wait for stay in `out` until this is set.
        let mut send_now = false;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break "server shutting down",
            frame = frames.next() => {
                let Some(first) = frame else {
                    break if frames.read_buffer().is_empty() { "closed by client" } else { "closed by client in the middle of a frame" };
                };
                // Run every request already received, so pipelined requests are
                // answered in one write.
                let mut next = Some(first);
                while let Some(result) = next {
                    match result {
                        Ok(payload) => send_now |= handle_frame(&shared, conn, &outbox, &mut authed, &mut out, &payload),
                        Err(FrameError::TooLarge { len, max }) => {
                            let err = ErrorBody::new(ErrorCode::FrameTooLarge, format!("frame of {len} bytes is larger than this server's limit of {max} bytes; closing"));
                            encode_error(&mut out, &Value::Null, &err);
                            send_now = true;
                            closing = Some("frame too large");
                            break;
                        }
                        Err(_) => {
                            closing = Some("read error");
                            break;
                        }
                    }
                    next = frames.next().now_or_never().flatten();
                }
            }
            _ = outbox.queued_by_other() => {}
            _ = half_sent_check.tick() => {
                if frames.decoder().partial_for() >= frame_timeout {
                    break "frame not completed within --frame-timeout";
                }
            }
        }
        if send_now && !out.is_empty() {
            outbox.send(&out);
            out.clear();
            if out.capacity() > KEEP_BUFFER {
                out = Vec::new();
            }
        }
        if outbox.has_queued() {
            // The client is not keeping up: read nothing more from it until it has.
            tokio::select! {
                flushed = outbox.flush() => if flushed.is_err() { break "write error" },
                _ = shutdown.cancelled() => break "server shutting down",
            }
        }
        if let Some(reason) = closing {
            break reason;
        }
    };

    let (released, cancelled) = registration.close();
    if released + cancelled > 0 {
        info!(conn, %peer, released, cancelled, reason = why_closed, "connection closed; its locks were released");
    } else {
        debug!(conn, %peer, reason = why_closed, "connection closed");
    }
}

/// A registered connection. Closing it releases its locks; so does dropping it, which is
/// what happens if the connection's task panics, so a bug cannot leave locks held.
struct Registration {
    shared: Arc<Shared>,
    conn: Option<ConnId>,
}

impl Registration {
    /// Releases the connection's locks: (released, cancelled).
    fn close(mut self) -> (usize, usize) {
        self.conn.take().map_or((0, 0), |conn| self.shared.disconnect(conn))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            tracing::error!(conn, "connection task ended abnormally; releasing its locks");
            self.shared.disconnect(conn);
        }
    }
}
