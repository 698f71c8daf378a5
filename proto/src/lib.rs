//! The pklock wire format, in one place, shared by `lockd` and the `pklock.so` PHP
//! extension so that the two cannot drift apart.
//!
//! - [`frame`]: a frame is a 4-byte big-endian length followed by that many bytes of
//!   UTF-8 JSON (pkLockServer's 2012 framing). Pure functions over byte buffers plus a
//!   blocking reader/writer for `std::io` users such as the PHP extension.
//! - [`message`]: the request/reply envelopes, each command's parameters and results,
//!   lock modes and error codes, as serde types.
//! - [`auth`]: the challenge-response proofs of `hello`/`auth` (HMAC-SHA256).
//!
//! `docs/PROTOCOL.md` at the top of the repository is the human contract.

pub mod auth;
pub mod frame;
pub mod message;

pub use frame::{FrameError, DEFAULT_MAX_FRAME, HEADER_LEN};
pub use message::*;

/// Version of the protocol spoken by this crate, reported by the `hello` command.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default TCP port of lockd's native listener.
pub const DEFAULT_PORT: u16 = 11300;
