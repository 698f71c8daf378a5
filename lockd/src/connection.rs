//! One client connection: reads frames, runs their commands, writes the replies, and
//! when it ends for any reason releases every lock its owners held.
//!
//! A client cannot stall anyone else or make the server buffer without bound: what
//! others send it (grants) never blocks them (see [`Outbox`]); its replies go out once
//! they reach [`SEND_AT`] bytes even if it asked to defer them; a client that does not
//! read its replies only stops its own requests from being read (backpressure), and
//! keeps its locks while its host answers; frames are read within the bounds of
//! [`FrameReader`]; with an auth key it must authenticate within `--auth-timeout`.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;

use pklock_proto::{ErrorBody, ErrorCode, FrameError};
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{interval, Interval, MissedTickBehavior, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cmd::auth::AuthState;
use crate::cmd::handle_frame;
use crate::codec::{FrameBudget, FrameReader, ReadError, SMALL_FRAME};
use crate::config::Config;
use crate::liveness::PeerWatch;
use crate::outbox::Outbox;
use crate::reply::encode_error;
use crate::state::State;
use crate::stream::ClientStream;
use crate::table::ConnId;

/// Replies are sent once this many bytes are waiting, deferred or not; reading pipelined
/// requests stops there until they are out.
pub const SEND_AT: usize = 64 * 1024;

/// Why a connection is closed whose frame ran out of time, found by the reader or
/// while the server was not reading.
const FRAME_TIMEOUT: &str = "frame not completed within --frame-timeout";

const SHUTTING_DOWN: &str = "server shutting down";
const KICKED: &str = "kicked by an admin";
/// Cluster mode: the session was resumed on another node, or this node may lose its lease.
const SESSION_MOVED: &str = "session moved to another node";

/// A reply buffer that grew past this (a big `locks` listing) is given back afterwards.
const KEEP_BUFFER: usize = 64 * 1024;

/// Serves connection `conn` (already registered with [`State::connect`]) until the
/// client closes, breaks the protocol, an admin kicks it, or the server shuts down. `slot` is its place
/// under `--max-clients`, given back before the socket closes. `tcp` is the client's TCP
/// socket, watched for a vanished peer: `stream` itself, or under TLS the socket behind
/// the bridge.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    shared: Arc<State>,
    conn: ConnId,
    slot: OwnedSemaphorePermit,
    stream: ClientStream,
    tcp: RawFd,
    peer: SocketAddr,
    budget: FrameBudget,
    shutdown: CancellationToken,
) {
    info!(conn, %peer, "connection opened");
    let registration = Registration { shared: shared.clone(), conn: Some(conn), slot: Some(slot) };
    let config = &shared.config;
    let mut watchdog = Watchdog::new(PeerWatch::new(tcp, config.user_timeout), config);
    let (reader, writer) = stream.into_split();
    let outbox = Arc::new(Outbox::new(writer));
    let mut auth = AuthState::new(config, peer);
    let mut frames = FrameReader::new(reader, frame_limit(config, auth.is_authenticated()), config.frame_timeout, budget);
    let mut out = Vec::new();
    let mut session = shared.cluster().map(|node| node.new_session(conn));
    let moved = session.as_ref().map_or_else(CancellationToken::new, |s| s.closer.clone());
    let kicked = shared.kick_signal(conn);

    let why_closed = loop {
        let mut closing = None;
        // Replies the client said it would not wait for stay in `out` until this is set
        // or SEND_AT bytes wait.
        let mut send_now = false;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break SHUTTING_DOWN,
            _ = moved.cancelled() => break SESSION_MOVED,
            _ = kicked.cancelled() => break KICKED,
            expired = watchdog.expired(auth.is_authenticated()) => {
                if expired == Expired::AuthTimeout {
                    let err = ErrorBody::new(ErrorCode::AuthRequired, format!("not authenticated within {:?}; closing", config.auth_timeout));
                    encode_error(&mut out, &Value::Null, &err);
                    send_now = true;
                }
                closing = Some(expired.reason());
            }
            frame = frames.next_frame() => {
                if matches!(frame, Ok(None)) {
                    break "closed by client";
                }
                // Run every request already received, so pipelined requests are
                // answered in one write, up to SEND_AT bytes of replies.
                let mut next = frame;
                loop {
                    match next {
                        Ok(Some(payload)) => {
                            send_now |= handle_frame(&shared, conn, &outbox, &mut auth, &mut session, &mut out, &payload);
                            if let (Some(node), Some(s)) = (shared.cluster(), session.as_mut()) {
                                if s.resume_asked.is_some() {
                                    // Boxed: cluster futures (etcd calls) are large, and
                                    // inline they would grow every connection's task.
                                    Box::pin(node.finish_resume(&shared, s, &outbox, &mut out)).await;
                                    send_now = true;
                                }
                            }
                            frames.set_max_frame(frame_limit(config, auth.is_authenticated()));
                            if auth.locked_out() {
                                closing = Some("too many failed auth attempts");
                                send_now = true;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            closing = Some(read_failed(e, auth.is_authenticated(), &mut out));
                            send_now = true;
                            break;
                        }
                    }
                    if out.len() >= SEND_AT {
                        break;
                    }
                    next = frames.buffered_frame();
                }
            }
            _ = outbox.queued_by_other() => {}
        }
        if (send_now || out.len() >= SEND_AT) && !out.is_empty() {
            outbox.send(&out);
            out.clear();
            if out.capacity() > KEEP_BUFFER {
                out = Vec::new();
            }
        }
        if outbox.has_queued() && closing.is_none() {
            // The client is not keeping up: read nothing more from it until it has. It
            // stays (with its locks) as long as its host answers.
            tokio::select! {
                flushed = outbox.flush() => if flushed.is_err() { break "write error" },
                expired = watchdog.expired(auth.is_authenticated()) => break expired.reason(),
                _ = frames.overdue() => break FRAME_TIMEOUT,
                _ = shutdown.cancelled() => break SHUTTING_DOWN,
                _ = kicked.cancelled() => break KICKED,
            }
            frames.restart_clock();
        }
        if let Some(reason) = closing {
            break reason;
        }
    };

    if let (Some(node), Some(session)) = (shared.cluster(), &session) {
        // A node that leaves, or whose session moved, leaves the locks to the session.
        Box::pin(node.disconnected(session, why_closed != SHUTTING_DOWN && why_closed != SESSION_MOVED)).await;
    }
    // A string field: the log quotes and escapes it, so a client's name cannot forge lines.
    let client = shared.client(conn).unwrap_or_else(|| "-".to_owned());
    let (released, cancelled) = registration.close();
    info!(conn, %peer, client, released, cancelled, reason = why_closed, "connection closed");
}

/// The largest frame accepted: small until the client has authenticated.
fn frame_limit(config: &Config, authed: bool) -> usize {
    if authed {
        config.max_frame
    } else {
        config.max_frame.min(SMALL_FRAME)
    }
}

/// Says why a frame could not be read (in `out`, when the client should hear it) and
/// returns the reason the connection closes.
fn read_failed(e: ReadError, authed: bool, out: &mut Vec<u8>) -> &'static str {
    match e {
        ReadError::Frame(FrameError::TooLarge { len, max }) => {
            let before_auth = if authed { "" } else { " before authentication" };
            let err = ErrorBody::new(
                ErrorCode::FrameTooLarge,
                format!("frame of {len} bytes is larger than this server's limit of {max} bytes{before_auth}; closing"),
            );
            encode_error(out, &Value::Null, &err);
            "frame too large"
        }
        ReadError::Frame(FrameError::Truncated) => "closed by client in the middle of a frame",
        ReadError::Timeout(_) => FRAME_TIMEOUT,
        ReadError::Frame(_) => "read error",
    }
}

/// Ends connections that must not stay for reasons other than what they send: no
/// authentication in time, or a peer that stopped answering.
struct Watchdog {
    tick: Interval,
    auth_deadline: Pin<Box<Sleep>>,
    peer: PeerWatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    AuthTimeout,
    PeerGone,
}

impl Expired {
    fn reason(self) -> &'static str {
        match self {
            Expired::AuthTimeout => "not authenticated within --auth-timeout",
            Expired::PeerGone => "peer stopped acknowledging for longer than --user-timeout",
        }
    }
}

impl Watchdog {
    fn new(peer: PeerWatch, config: &Config) -> Self {
        let mut tick = interval(peer.period());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Watchdog { tick, auth_deadline: Box::pin(tokio::time::sleep(config.auth_timeout)), peer }
    }

    /// Resolves when the connection must close. Cancel-safe.
    async fn expired(&mut self, authed: bool) -> Expired {
        loop {
            tokio::select! {
                _ = &mut self.auth_deadline, if !authed => return Expired::AuthTimeout,
                _ = self.tick.tick() => if self.peer.gone() { return Expired::PeerGone },
            }
        }
    }
}

/// A registered connection. Closing it releases its locks and its client slot; so does
/// dropping it, which is what happens if the connection's task panics, so a bug cannot
/// leave locks held.
struct Registration {
    shared: Arc<State>,
    conn: Option<ConnId>,
    slot: Option<OwnedSemaphorePermit>,
}

impl Registration {
    /// Releases the connection's locks, then its slot: (released, cancelled).
    fn close(mut self) -> (usize, usize) {
        let released = self.conn.take().map_or((0, 0), |conn| self.shared.disconnect(conn));
        self.slot = None;
        released
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
