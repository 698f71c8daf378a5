//! Typed errors of the client, free of PHP types, and how each one becomes a PHP exception.
//!
//! The Rust code below `client.rs` returns [`ClientError`]; only the PHP boundary turns it
//! into a `PhpException` of a specific class, so that every failure a PHP caller can see
//! has a class of its own (see `exceptions.rs`).

use std::fmt;
use std::io;

use ext_php_rs::exception::PhpException;
use ext_php_rs::zend::ce;
use pklock_proto::{ErrorBody, ErrorCode};

use crate::exceptions;
use crate::transport::TlsError;

/// What a lost connection took with it, as far as the caller is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Released {
    /// No owner in this process held a lock through the connection.
    Nothing,
    /// Other `PkLockClient` objects of this process held locks; the caller held none.
    OthersLocks,
    /// The caller held these keys (and the server released them).
    CallersLocks(Vec<String>),
}

/// What broke a connection, for the code of the exception (docs/php-exceptions.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossCause {
    /// Closed by the server, reset, or another I/O failure.
    Broken,
    /// No reply came in time, so the client closed the connection.
    NoReply,
    /// The server broke the protocol, so the client closed the connection.
    Protocol,
}

/// Whether a bad argument is of the wrong type or of the right type with a wrong value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgumentProblem {
    Type,
    Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to lockd at {addr}: {source}")]
    Connect { addr: String, source: io::Error },

    #[error("cannot connect to lockd at {addr} over TLS: {source}")]
    Tls { addr: String, source: TlsError },

    #[error("connection to lockd at {addr} lost ({reason}){}", describe_released(.released))]
    ConnectionLost { addr: String, reason: String, released: Released, cause: LossCause },

    /// No node of a list could be connected to; `failures` has one message per node tried.
    #[error("cannot connect to any lockd node: {}", .failures.join("; "))]
    NoNode { failures: Vec<String> },

    /// A cluster session lost with its node could not be taken over by any other node yet.
    #[error(
        "connection to lockd at {addr} lost ({reason}) and its session not resumed on any node ({}); \
         its locks stay held for {left:.1} s more, during which a later call tries again",
        .failures.join("; ")
    )]
    NotResumed { addr: String, reason: String, failures: Vec<String>, left: f64 },

    /// Authentication did not happen as it must, by this client's judgement (the server's
    /// own refusals are `Server`).
    #[error("authentication with lockd at {addr} failed: {problem}")]
    Auth { addr: String, problem: String },

    /// The server answered a request (named in `request`) with an error.
    #[error("{request} failed: {} ({})", .body.message, .body.code.as_str())]
    Server { request: String, body: ErrorBody },

    /// The server says a lock this client tracked as held was not held.
    #[error("{request}: lockd says {keys:?} were not held, although this client had them; the locks were lost")]
    NotHeld { request: String, keys: Vec<String> },

    #[error("lockd at {addr} sent a result that cannot be decoded: {detail}")]
    UndecodableResult { addr: String, detail: String },

    #[error("could not lock {keys} within {wait} s")]
    WaitRanOut { keys: String, wait: f64 },

    #[error("{message}")]
    Argument { problem: ArgumentProblem, message: String },

    /// A PHP exception is already pending (thrown by user code we called); it propagates.
    #[error("a PHP exception is pending")]
    PhpExceptionPending,
}

fn describe_released(released: &Released) -> String {
    match released {
        Released::Nothing => String::new(),
        Released::OthersLocks => "; the server released the locks this process held through it".into(),
        Released::CallersLocks(keys) => format!(
            "; the server released the locks this process held through it, including this client's {}",
            quote_keys(keys)
        ),
    }
}

/// `'a'` or `['a', 'b']`, for messages; a long key or list is shortened with `…`, so a
/// huge argument does not make a huge message.
pub fn quote_keys(keys: &[String]) -> String {
    const KEY_CHARS: usize = 200;
    const LISTED: usize = 8;
    let quote = |key: &String| match key.char_indices().nth(KEY_CHARS) {
        Some((cut, _)) => format!("'{}…'", &key[..cut]),
        None => format!("'{key}'"),
    };
    match keys {
        [one] => quote(one),
        many => {
            let mut listed: Vec<String> = many.iter().take(LISTED).map(quote).collect();
            if many.len() > LISTED {
                listed.push(format!("… {} more", many.len() - LISTED));
            }
            format!("[{}]", listed.join(", "))
        }
    }
}

impl ClientError {
    pub fn type_error(message: impl fmt::Display) -> Self {
        ClientError::Argument { problem: ArgumentProblem::Type, message: message.to_string() }
    }

    pub fn value_error(message: impl fmt::Display) -> Self {
        ClientError::Argument { problem: ArgumentProblem::Value, message: message.to_string() }
    }
}

impl From<ClientError> for PhpException {
    fn from(err: ClientError) -> Self {
        use exceptions::{Code, ExceptionClass::*};
        let message = err.to_string();
        let (class, code) = match err {
            ClientError::Connect { .. } | ClientError::Tls { .. } | ClientError::NoNode { .. } => {
                (PkLockConnectionException, Code::ConnectFailed)
            }
            ClientError::UndecodableResult { .. } => (PkLockConnectionException, Code::ProtocolError),
            ClientError::NotResumed { .. } => (PkLockConnectionException, Code::NotResumed),
            ClientError::ConnectionLost { released: Released::CallersLocks(_), .. } | ClientError::NotHeld { .. } => {
                (PkLockLostException, Code::LocksLost)
            }
            ClientError::ConnectionLost { cause, .. } => (
                PkLockConnectionException,
                match cause {
                    LossCause::Broken => Code::ConnectionLost,
                    LossCause::NoReply => Code::ReplyTimeout,
                    LossCause::Protocol => Code::ProtocolError,
                },
            ),
            ClientError::Server { body, .. } => (server_exception_class(body.code), Code::of_server_error(body.code)),
            ClientError::Auth { .. } => (PkLockAuthException, Code::ServerNotAuthenticated),
            ClientError::WaitRanOut { .. } => (PkLockTimeoutException, Code::WaitTimeout),
            ClientError::Argument { problem: ArgumentProblem::Type, .. } => {
                return PhpException::new(message, 0, ce::type_error())
            }
            ClientError::Argument { problem: ArgumentProblem::Value, .. } => {
                return PhpException::new(message, 0, ce::value_error())
            }
            // Throwing does nothing while an exception is pending, so the user's one wins.
            ClientError::PhpExceptionPending => return PhpException::new(message, 0, PkLockException.entry()),
        };
        class.exception(code, message)
    }
}

fn server_exception_class(code: ErrorCode) -> exceptions::ExceptionClass {
    use exceptions::ExceptionClass::*;
    match code {
        ErrorCode::BadRequest => PkLockBadRequestException,
        ErrorCode::UnknownCommand => PkLockUnknownCommandException,
        ErrorCode::FrameTooLarge => PkLockFrameTooLargeException,
        ErrorCode::AuthRequired | ErrorCode::AuthFailed => PkLockAuthException,
        ErrorCode::Deadlock => PkLockDeadlockException,
        ErrorCode::TooManyLocks => PkLockTooManyLocksException,
        ErrorCode::TooManyWaiters => PkLockTooManyWaitersException,
        ErrorCode::TooManyKeys => PkLockTooManyKeysException,
        ErrorCode::BadKey => PkLockBadKeyException,
        ErrorCode::OwnerBusy => PkLockOwnerBusyException,
        ErrorCode::TooManyClients => PkLockTooManyClientsException,
        ErrorCode::ShuttingDown => PkLockShuttingDownException,
        ErrorCode::MemoryLimit => PkLockMemoryLimitException,
        ErrorCode::DeadlockSearchLimit => PkLockDeadlockSearchLimitException,
        ErrorCode::Unavailable => PkLockUnavailableException,
        // The session's locks are gone, as when a connection is lost while holding locks.
        ErrorCode::SessionExpired => PkLockLostException,
        // Only lockctl sends admin commands.
        ErrorCode::NotAdmin | ErrorCode::Unknown => PkLockServerException,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_keys_are_short_whatever_the_argument() {
        assert_eq!(quote_keys(&["a".into()]), "'a'");
        assert_eq!(quote_keys(&["a".into(), "b".into()]), "['a', 'b']");
        let long = quote_keys(&["k".repeat(100_000)]);
        assert!(long.len() < 250 && long.ends_with("…'"), "{long}");
        let many: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert!(quote_keys(&many).ends_with("… 12 more]"));
    }

    use super::*;

    #[test]
    fn lost_connection_message_says_what_the_server_released() {
        let lost = |released| ClientError::ConnectionLost {
            addr: "h:1".into(),
            reason: "reset".into(),
            released,
            cause: LossCause::Broken,
        };
        assert_eq!(lost(Released::Nothing).to_string(), "connection to lockd at h:1 lost (reset)");
        assert!(lost(Released::OthersLocks).to_string().ends_with("released the locks this process held through it"));
        assert!(lost(Released::CallersLocks(vec!["a".into(), "b".into()]))
            .to_string()
            .ends_with("including this client's ['a', 'b']"));
    }

    #[test]
    fn server_errors_name_the_request_and_the_code() {
        let err = ClientError::Server {
            request: "lock('a')".into(),
            body: ErrorBody::new(ErrorCode::TooManyLocks, "limit of 10 locks reached"),
        };
        assert_eq!(err.to_string(), "lock('a') failed: limit of 10 locks reached (too_many_locks)");
    }
}
