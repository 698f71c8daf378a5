//! TLS on the native listener (`--tls-cert`/`--tls-key`): the certificate is loaded at
//! start with errors that name the problem, every accepted client must finish its handshake
//! within `--tls-handshake-timeout`, and then it is served by the same connection task as a
//! plain TCP client.
//!
//! The connection task cannot own a TLS stream directly: its [`Outbox`](crate::outbox::Outbox)
//! is written with `try_write` from other tasks (a grant goes straight onto the waiter's
//! socket), and a TLS session is a state machine only one owner can drive. So the connection
//! task gets one end of a local socket pair and a pump moves bytes between the other end and
//! the TLS stream. Every hop has a bounded buffer, so a client that does not read still stops
//! being read, as over plain TCP.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pklock_proto::{ErrorBody, ErrorCode};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::parse_seconds;
use crate::codec::FrameBudget;
use crate::connection;
use crate::reply::encode_error;
use crate::state::State;
use crate::table::ConnId;

/// The first byte of every TLS connection: a handshake record. A pklock frame starts with
/// the high byte of its length, which is 0 for any frame a server accepts.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How long the pump may take to hand the client what the connection task wrote last
/// (close_notify included) once that task has ended.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Each direction of the pump moves bytes through a buffer of this size. Requests and replies
/// are mostly far smaller, and every idle TLS connection keeps two (tokio's default for
/// `copy` is 8 KiB).
const PUMP_BUFFER: usize = 2048;

/// The TLS flags of `lockd` (flattened into [`Config`](crate::Config)).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// PEM file with the server's certificate chain, its own certificate first. With
    /// --tls-key, every --listen address speaks TLS only (docs/TLS.md).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Seconds a client may take to finish the TLS handshake; then it is closed, so a
    /// client that never finishes cannot hold a connection slot.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub tls_handshake_timeout: Duration,
}

/// Why the certificate or key cannot be used; lockd does not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {flag} {}: {source}", .path.display())]
    Read { flag: &'static str, path: PathBuf, source: io::Error },
    #[error("{flag} {} is not valid PEM: {source}", .path.display())]
    Pem { flag: &'static str, path: PathBuf, source: pem::Error },
    #[error("--tls-cert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .0.display())]
    NoCertificate(PathBuf),
    #[error("--tls-key {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", .0.display())]
    NoKey(PathBuf),
    #[error("--tls-key {} is not the private key of the certificate in --tls-cert {}", .key.display(), .cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot use --tls-cert {} with --tls-key {}: {source}", .cert.display(), .key.display())]
    Unusable { cert: PathBuf, key: PathBuf, source: rustls::Error },
}

impl TlsArgs {
    /// The acceptor for every listener, or `None` when TLS is off.
    pub fn acceptor(&self) -> Result<Option<TlsAcceptor>, TlsSetupError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let chain = load_certificates(cert)?;
        let private_key = load_key(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, private_key))
            .map_err(|source| match source {
                rustls::Error::InconsistentKeys(_) => TlsSetupError::KeyMismatch { cert: cert.clone(), key: key.clone() },
                source => TlsSetupError::Unusable { cert: cert.clone(), key: key.clone(), source },
            })?;
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    fs::read(path).map_err(|source| TlsSetupError::Read { flag, path: path.to_owned(), source })
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read_pem("--tls-cert", path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsSetupError::Pem { flag: "--tls-cert", path: path.to_owned(), source })?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate(path.to_owned()));
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = read_pem("--tls-key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsSetupError::NoKey(path.to_owned()),
        source => TlsSetupError::Pem { flag: "--tls-key", path: path.to_owned(), source },
    })
}

/// Serves connection `conn` (registered, socket options set) over TLS: handshake under the
/// timeout, then the usual connection task through the bridge.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    acceptor: TlsAcceptor,
    shared: Arc<State>,
    conn: ConnId,
    slot: OwnedSemaphorePermit,
    stream: TcpStream,
    peer: SocketAddr,
    budget: FrameBudget,
    shutdown: CancellationToken,
) {
    // The TCP socket lives in the pump below for as long as the connection task runs;
    // the task watches it for a vanished peer.
    let tcp = stream.as_raw_fd();
    let limit = shared.config.tls.tls_handshake_timeout;
    // A second descriptor keeps the socket open, if the handshake fails, until the slot is
    // free again: a client that sees the close may connect at once, as over plain TCP.
    let held_open = stream.as_fd().try_clone_to_owned();
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => Err(NotServed::Failed("server shutting down".to_owned())),
        done = tokio::time::timeout(limit, handshake(&acceptor, stream)) => done.unwrap_or_else(|_| {
            Err(NotServed::Failed(format!("TLS handshake not completed within --tls-handshake-timeout ({} s)", limit.as_secs_f64())))
        }),
    };
    let bridged = handshake.and_then(|tls| {
        let (inner, outer) =
            UnixStream::pair().map_err(|e| NotServed::Failed(format!("cannot make the TLS bridge: {e}")))?;
        Ok((tls, inner, outer))
    });
    let (tls, inner, outer) = match bridged {
        Ok(parts) => parts,
        Err(not_served) => {
            shared.disconnect(conn);
            drop(slot);
            drop(held_open);
            match not_served {
                NotServed::Probe => debug!(conn, %peer, "closed before the TLS handshake"),
                NotServed::Failed(reason) => warn!(conn, %peer, reason, "TLS client closed before it was served"),
            }
            return;
        }
    };
    drop(held_open);
    debug!(conn, %peer, "TLS handshake done");
    let served = connection::serve(shared, conn, slot, inner.into(), tcp, peer, budget, shutdown);
    let pumped = pump(tls, outer);
    tokio::pin!(served, pumped);
    tokio::select! {
        () = &mut served => { let _ = tokio::time::timeout(CLOSE_TIMEOUT, pumped).await; }
        () = &mut pumped => served.await,
    }
}

/// Why a TLS client was not served.
enum NotServed {
    /// It closed without sending anything: a TCP health check or a port probe, not worth a
    /// warning.
    Probe,
    Failed(String),
}

/// The TLS handshake; a client that speaks plain pklock instead is told so in a pklock
/// error frame, which it can read, rather than in a TLS alert, which it cannot.
async fn handshake(acceptor: &TlsAcceptor, mut stream: TcpStream) -> Result<TlsStream<TcpStream>, NotServed> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) => return Err(NotServed::Probe),
        Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
            let mut out = Vec::new();
            let message = "this lockd listener speaks TLS only; connect with TLS (pklock.so option tls)";
            encode_error(&mut out, &Value::Null, &ErrorBody::new(ErrorCode::BadRequest, message));
            if stream.write_all(&out).await.is_ok() && stream.shutdown().await.is_ok() {
                // Read what the client sent until it closes: closing with unread bytes
                // would reset the connection and could destroy the error frame in flight.
                let mut sink = [0u8; 512];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            }
            return Err(NotServed::Failed("the client spoke plain TCP, not TLS".to_owned()));
        }
        Ok(_) => {}
        Err(e) => return Err(NotServed::Failed(format!("before the TLS handshake: {e}"))),
    }
    acceptor.accept(stream).await.map_err(|e| NotServed::Failed(format!("TLS handshake failed: {e}")))
}

/// Moves bytes between the client's TLS stream and the connection task's end of the bridge
/// until the connection task is done (its end closes) or the client's stream breaks.
async fn pump(tls: TlsStream<TcpStream>, bridge: UnixStream) {
    let (from_client, mut to_client) = tokio::io::split(tls);
    let (from_server, mut to_server) = bridge.into_split();
    let mut from_client = BufReader::with_capacity(PUMP_BUFFER, from_client);
    let mut from_server = BufReader::with_capacity(PUMP_BUFFER, from_server);
    let replies = async {
        let _ = tokio::io::copy_buf(&mut from_server, &mut to_client).await;
        // close_notify, then FIN: the client sees a clean end.
        let _ = to_client.shutdown().await;
    };
    let requests = async {
        let _ = tokio::io::copy_buf(&mut from_client, &mut to_server).await;
        // The connection task reads the client's end of stream and closes, ending `replies`.
        let _ = to_server.shutdown().await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = replies => {}
        () = requests => {}
    }
}
