//! The byte stream under a lockd connection: the TCP socket itself, or TLS over it (options
//! `tls`, `tls_ca`, `tls_verify`).
//!
//! TLS is blocking rustls on the same socket, so the socket's timeouts, keepalive and fork
//! handling apply unchanged and no thread is started. Every send, plain or TLS, goes through
//! `send(MSG_NOSIGNAL)`: a dead peer must be an error, not a SIGPIPE that kills PHP.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{self, CryptoProvider};
use rustls::{CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// How a client reaches lockd: the options `tls`, `tls_ca` and `tls_verify`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub enabled: bool,
    /// PEM file of the CA(s) to trust; `None`: the system's CAs.
    pub ca: Option<PathBuf>,
    /// False accepts any certificate (for tests only: anyone on the path can listen in).
    pub verify: bool,
}

impl TlsSettings {
    /// How the settings tell connections apart: objects that reach a server differently
    /// must not share a connection. `None` for plain TCP.
    pub fn describe(&self) -> Option<String> {
        match (self.enabled, self.verify, &self.ca) {
            (false, _, _) => None,
            (true, false, _) => Some("tls unverified".into()),
            (true, true, None) => Some("tls".into()),
            (true, true, Some(ca)) => Some(format!("tls ca {}", ca.display())),
        }
    }
}

/// Why a TLS connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read tls_ca {}: {source}", .path.display())]
    ReadCa { path: PathBuf, source: io::Error },
    #[error("tls_ca {} is not valid PEM: {source}", .path.display())]
    CaPem { path: PathBuf, source: pem::Error },
    #[error("tls_ca {} holds no usable CA certificate{}", .path.display(), .detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NoCa { path: PathBuf, detail: Option<String> },
    #[error("no CA certificates found on this system; set tls_ca to the PEM file of lockd's CA")]
    NoSystemCa,
    #[error("{0:?} cannot be checked against a certificate (not a host name or IP address)")]
    BadServerName(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
}

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, Socket>>),
}

impl Transport {
    /// TLS over `stream`: verifies the server against `host` (the name or address given to
    /// the constructor) and completes the handshake within `timeout`.
    pub fn tls(stream: TcpStream, host: &str, settings: &TlsSettings, timeout: Duration) -> Result<Self, TlsError> {
        let config = client_config(settings)?;
        let name = ServerName::try_from(host.to_owned()).map_err(|_| TlsError::BadServerName(host.to_owned()))?;
        let conn = ClientConnection::new(config, name).map_err(|e| TlsError::Handshake(e.to_string()))?;
        let handshake_error = |e: io::Error| TlsError::Handshake(describe_handshake_error(&e, settings, host, timeout));
        stream.set_read_timeout(Some(timeout)).map_err(handshake_error)?;
        let mut tls = StreamOwned::new(conn, Socket { stream, recv_flags: 0 });
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(handshake_error)?;
        }
        // The connection sets read timeouts per call from here on.
        tls.sock.stream.set_read_timeout(None).map_err(handshake_error)?;
        Ok(Transport::Tls(Box::new(tls)))
    }

    pub fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(tls) => &tls.sock.stream,
        }
    }

    /// Sends all of `bytes`; a full socket that stays full for the write timeout is
    /// `WouldBlock`.
    pub fn send_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => {
                let mut sent = 0;
                while sent < bytes.len() {
                    match send(stream.as_raw_fd(), &bytes[sent..]) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Transport::Tls(tls) => {
                tls.write_all(bytes)?;
                tls.flush()
            }
        }
    }

    /// One receive into the spare capacity of `buf` (at least one byte of it); `Ok(0)` is
    /// the end of the stream. `flags` are `recv` flags (`MSG_DONTWAIT` to poll).
    pub fn recv(&mut self, buf: &mut Vec<u8>, flags: libc::c_int) -> io::Result<usize> {
        let spare = buf.spare_capacity_mut();
        let n = match self {
            Transport::Plain(stream) => recv(stream.as_raw_fd(), spare, flags)?,
            Transport::Tls(tls) => {
                // rustls wants initialised memory; the copy of a TLS record dwarfs this.
                spare.fill(MaybeUninit::new(0));
                // SAFETY: every byte of `spare` was initialised just above.
                let spare = unsafe { &mut *(spare as *mut [MaybeUninit<u8>] as *mut [u8]) };
                tls.sock.recv_flags = flags;
                let read = tls.read(spare);
                tls.sock.recv_flags = 0;
                match read {
                    // lockd always sends close_notify; a bare end of stream means it died,
                    // which the caller handles as the close it is.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                    read => read?,
                }
            }
        };
        // SAFETY: the receive initialised the first `n` spare bytes.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }
}

/// The TCP socket as rustls reads and writes it.
pub struct Socket {
    stream: TcpStream,
    /// The flags of the receive in progress.
    recv_flags: libc::c_int,
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: initialised bytes are valid `MaybeUninit`s, and recv only writes bytes.
        let buf = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        recv(self.stream.as_raw_fd(), buf, self.recv_flags)
    }
}

impl Write for Socket {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        send(self.stream.as_raw_fd(), bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is a valid buffer of `bytes.len()` bytes for the whole call.
    let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is writable for `buf.len()` bytes; recv writes at most that many.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3");
    let config = if settings.verify {
        builder.with_root_certificates(trusted_roots(settings.ca.as_deref())?).with_no_client_auth()
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The CAs in `ca`, or the system's.
fn trusted_roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa { path: path.to_owned(), source })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|source| TlsError::CaPem { path: path.to_owned(), source })?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::NoCa { path: path.to_owned(), detail: Some(e.to_string()) })?;
            }
            if roots.is_empty() {
                return Err(TlsError::NoCa { path: path.to_owned(), detail: None });
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(TlsError::NoSystemCa);
            }
        }
    }
    Ok(roots)
}

/// What went wrong in a handshake, in the terms of the options that fix it.
fn describe_handshake_error(e: &io::Error, settings: &TlsSettings, host: &str, timeout: Duration) -> String {
    let trusted = match &settings.ca {
        Some(ca) => format!("the CA in tls_ca {}", ca.display()),
        None => "the system's CAs (set tls_ca to lockd's CA)".to_owned(),
    };
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => {
            format!("lockd's certificate is not signed by {trusted}")
        }
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!("lockd's certificate is not valid for {host:?}, the host this client connects to"),
        Some(rustls::Error::InvalidCertificate(problem)) => format!("lockd's certificate was refused: {problem}"),
        Some(rustls::Error::InvalidMessage(_)) => {
            "the server did not answer in TLS; is lockd started with --tls-cert and --tls-key?".to_owned()
        }
        Some(other) => other.to_string(),
        None => match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                format!("no answer within {:.3} s", timeout.as_secs_f64())
            }
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                "lockd closed the connection (is it at its --max-clients limit, or is this host not in its --allow list?)"
                    .to_owned()
            }
            _ => e.to_string(),
        },
    }
}

/// `tls_verify = false`: any certificate is taken, but the handshake's signatures are still
/// checked against it, so the session is at least with the holder of that certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
