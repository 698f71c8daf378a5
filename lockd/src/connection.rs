//! One client connection: reads frames, runs their commands, writes the replies, and
//! when it ends for any reason releases every lock its owners held.
//!
//! A client cannot stall anyone else: replies to it queue on its own task, a client that
//! does not read only stops its own requests from being read (backpressure), and a
//! frame it starts must be finished within `--frame-timeout`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use pklock_proto::{ErrorBody, ErrorCode, FrameError};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::cmd::handle_frame;
use crate::codec::FrameDecoder;
use crate::state::{encode_error, Shared};
use crate::table::ConnId;

/// A reply buffer that grew past this (a big `locks` listing) is given back afterwards.
const KEEP_BUFFER: usize = 64 * 1024;

/// Read buffer a connection starts with; it grows for larger frames. Most requests are
/// well under this, and idle connections should cost little memory.
const INITIAL_READ_BUFFER: usize = 512;

/// Serves connection `conn` (already registered with [`Shared::connect`]) until the
/// client closes, breaks the protocol, or the server shuts down.
pub async fn serve(shared: Arc<Shared>, conn: ConnId, stream: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    debug!(conn, %peer, "connection opened");
    let (reader, mut writer) = stream.into_split();
    let mut frames = FramedRead::with_capacity(reader, FrameDecoder::new(shared.config.max_frame), INITIAL_READ_BUFFER);
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let mut out = Vec::new();
    let mut authed = shared.config.auth_key.is_none();
    // Checks for a frame left half-sent; a quarter of the limit keeps the close within
    // 1.25 x --frame-timeout while idle connections rarely wake.
    let frame_timeout = shared.config.frame_timeout;
    let mut half_sent_check = interval((frame_timeout / 4).max(std::time::Duration::from_millis(10)));
    half_sent_check.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let why_closed = loop {
        let mut closing = None;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break "server shutting down",
            frame = frames.next() => match frame {
                Some(Ok(payload)) => {
                    let mut woke_waiters = handle_frame(&shared, conn, &tx, &mut authed, &mut out, &payload);
                    // Answer pipelined requests already received in one write.
                    while let Some(Some(Ok(payload))) = frames.next().now_or_never() {
                        woke_waiters |= handle_frame(&shared, conn, &tx, &mut authed, &mut out, &payload);
                    }
                    if woke_waiters {
                        // Let the woken connections' tasks (scheduled next on this worker)
                        // send their grants before this one sends its own reply: handoff
                        // latency is what waiters feel, and an unlock's reply is rarely
                        // awaited.
                        tokio::task::yield_now().await;
                    }
                }
                Some(Err(FrameError::TooLarge { len, max })) => {
                    let err = ErrorBody::new(ErrorCode::FrameTooLarge, format!("frame of {len} bytes is larger than this server's limit of {max} bytes; closing"));
                    encode_error(&mut out, &Value::Null, &err);
                    closing = Some("frame too large");
                }
                Some(Err(_)) => break "read error",
                None if frames.read_buffer().is_empty() => break "closed by client",
                None => break "closed by client in the middle of a frame",
            },
            Some(reply) = rx.recv() => out.extend_from_slice(&reply),
            _ = half_sent_check.tick() => {
                if frames.decoder().partial_for() >= frame_timeout {
                    break "frame not completed within --frame-timeout";
                }
            }
        }
        while let Ok(reply) = rx.try_recv() {
            out.extend_from_slice(&reply);
        }
        if !out.is_empty() {
            tokio::select! {
                written = writer.write_all(&out) => if written.is_err() { break "write error" },
                _ = shutdown.cancelled() => break "server shutting down",
            }
            out.clear();
            if out.capacity() > KEEP_BUFFER {
                out = Vec::new();
            }
        }
        if let Some(reason) = closing {
            break reason;
        }
    };

    let (released, cancelled) = shared.disconnect(conn);
    if released + cancelled > 0 {
        info!(conn, %peer, released, cancelled, reason = why_closed, "connection closed; its locks were released");
    } else {
        debug!(conn, %peer, reason = why_closed, "connection closed");
    }
}
