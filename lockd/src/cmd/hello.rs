//! `hello`: protocol and server versions, features, and the authentication challenge when
//! the server has a key (answered with `auth`, see `auth.rs`).

use pklock_proto::{HelloParams, HelloResult, PROTOCOL_VERSION};
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};

/// What this server supports, for clients that adapt.
const FEATURES: &[&str] = &["shared", "multi_key", "fencing", "deadlock_detection", "check", "locks", "stat", "pklockserver"];

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: HelloParams = parse_params(raw)?;
    if params.plaintext_auth_key.is_some() {
        return Err(ctx.auth.fail(
            ctx.conn,
            "hello carried a plaintext auth_key, which this server refuses: upgrade the client to one that answers the challenge with auth (the key must never travel over the network)",
        ));
    }
    if let Some(client) = &params.client {
        ctx.shared.set_client(ctx.conn, client);
    }
    let auth = ctx.auth.challenge()?;
    ctx.reply(&HelloResult {
        protocol: PROTOCOL_VERSION,
        server: "lockd".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        connection: ctx.conn,
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
        max_frame: ctx.shared.config.max_frame,
        auth,
        session: ctx.shared.cluster().zip(ctx.session.as_ref()).map(|(node, session)| node.session_info(session)),
    });
    Ok(())
}

