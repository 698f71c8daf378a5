//! `auth`, and each connection's authentication state: the challenge `hello` issued, the
//! failed attempts so far. The proofs themselves are `pklock_proto::auth`, shared with
//! pklock.so.
//!
//! A challenge is good for one `auth`, right or wrong, so a captured handshake cannot be
//! replayed; the third failed attempt on a connection closes it, so guessing costs a new
//! connection per three guesses. Logs name the peer, never the key or a proof.

use std::net::SocketAddr;

use pklock_proto::auth::{AuthKey, Nonce, Proof, METHOD};
use pklock_proto::{AuthChallenge, AuthParams, AuthResult, ErrorBody, ErrorCode};
use serde_json::value::RawValue;
use tracing::{debug, warn};

use super::{parse_params, CmdResult, Ctx};
use crate::config::Config;

/// Failed attempts (wrong proofs, plaintext keys, `auth` without a challenge) after which
/// the connection is closed.
pub const MAX_FAILURES: u32 = 3;

pub struct AuthState {
    peer: SocketAddr,
    /// The server's key while this connection has not authenticated; `None` once it has (or
    /// when the server has no key).
    pending: Option<Pending>,
}

struct Pending {
    key: AuthKey,
    /// The nonce of the last `hello`, until an `auth` uses it.
    challenge: Option<Nonce>,
    failures: u32,
}

impl AuthState {
    pub fn new(config: &Config, peer: SocketAddr) -> Self {
        let pending = config.auth_key().map(|key| Pending { key: key.clone(), challenge: None, failures: 0 });
        AuthState { peer, pending }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn is_authenticated(&self) -> bool {
        self.pending.is_none()
    }

    /// Whether the connection must be closed: too many failed attempts.
    pub fn locked_out(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.failures >= MAX_FAILURES)
    }

    /// A fresh challenge for `hello` (replacing any earlier one), or `None` when there is
    /// nothing to prove.
    pub fn challenge(&mut self) -> Result<Option<AuthChallenge>, ErrorBody> {
        let Some(pending) = self.pending.as_mut() else {
            return Ok(None);
        };
        let nonce = Nonce::random().map_err(|e| ErrorBody::new(ErrorCode::AuthFailed, format!("cannot make a challenge: {e}")))?;
        let challenge = AuthChallenge { method: METHOD.into(), nonce: nonce.as_str().into() };
        pending.challenge = Some(nonce);
        Ok(Some(challenge))
    }

    /// Counts a failed attempt, logs it and says why; the last allowed one also says the
    /// connection is being closed.
    pub fn fail(&mut self, conn: u64, why: &str) -> ErrorBody {
        let failures = match self.pending.as_mut() {
            Some(pending) => {
                pending.failures += 1;
                pending.failures
            }
            None => 0,
        };
        warn!(conn, peer = %self.peer, attempt = failures, reason = why, "authentication failed");
        metrics::counter!(crate::telemetry::AUTH_FAILURES).increment(1);
        let closing = if self.locked_out() { format!("; {MAX_FAILURES} failed attempts, closing the connection") } else { String::new() };
        ErrorBody::new(ErrorCode::AuthFailed, format!("{why}{closing}"))
    }
}

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let Some(pending) = ctx.auth.pending.as_mut() else {
        let why = if ctx.shared.config.auth_key().is_some() { "already authenticated" } else { "this server has no auth key" };
        return Err(ErrorBody::new(ErrorCode::BadRequest, why));
    };
    // Taken whatever follows: a challenge answers one attempt only.
    let challenge = pending.challenge.take();
    let verdict = match (parse_params::<AuthParams>(raw), challenge) {
        // Not serde's message: it may quote the values sent, and this one is logged.
        (Err(_), _) => Err("bad parameters: auth takes client_nonce and proof, both hex strings".into()),
        (Ok(_), None) => Err("no challenge to answer: send hello first (each hello's nonce is good for one auth)".into()),
        (Ok(params), Some(server_nonce)) => match Nonce::parse(&params.client_nonce) {
            Err(e) => Err(format!("bad client_nonce: {e}")),
            Ok(client_nonce) if Proof::Client.verify(&pending.key, &server_nonce, &client_nonce, &params.proof) => {
                Ok(Proof::Server.compute(&pending.key, &server_nonce, &client_nonce))
            }
            Ok(_) => Err("wrong proof: the client does not have this server's auth key".into()),
        },
    };
    match verdict {
        Ok(server_proof) => {
            ctx.auth.pending = None;
            debug!(conn = ctx.conn, peer = %ctx.auth.peer, "authenticated");
            ctx.reply(&AuthResult { authenticated: true, server_proof });
            Ok(())
        }
        Err(why) => Err(ctx.auth.fail(ctx.conn, &why)),
    }
}
