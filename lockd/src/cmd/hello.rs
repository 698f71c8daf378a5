//! `hello`: protocol and server versions, features, and the auth key when one is set.

use pklock_proto::{ErrorBody, ErrorCode, HelloParams, HelloResult, PROTOCOL_VERSION};
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};

/// What this server supports, for clients that adapt.
const FEATURES: &[&str] = &["shared", "multi_key", "fencing", "deadlock_detection", "check", "locks", "stat", "pklockserver"];

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: HelloParams = parse_params(raw)?;
    if let Some(expected) = &ctx.shared.config.auth_key {
        let given = params.auth_key.as_deref().unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            *ctx.authed = false;
            return Err(ErrorBody::new(ErrorCode::AuthFailed, "wrong or missing auth key"));
        }
        *ctx.authed = true;
    }
    ctx.reply(&HelloResult {
        protocol: PROTOCOL_VERSION,
        server: "lockd".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        connection: ctx.conn,
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
        max_frame: ctx.shared.config.max_frame,
    });
    Ok(())
}

/// Compares without an early exit, so response time does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
