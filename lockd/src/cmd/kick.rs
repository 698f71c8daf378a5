//! `kick` (admin only): closes another connection, which releases its locks as any close
//! does (in cluster mode through the log). An admin is a client whose address is in
//! `--admin-from` (loopback by default) and that, when the server has an auth key,
//! authenticated, as every command requires.

use pklock_proto::{ErrorBody, ErrorCode, KickParams, KickResult};
use serde_json::value::RawValue;
use tracing::info;

use super::{parse_params, CmdResult, Ctx};

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let peer = ctx.auth.peer();
    if !ctx.shared.config.admin_from.iter().any(|net| net.contains(&peer.ip().to_canonical())) {
        return Err(ErrorBody::new(ErrorCode::NotAdmin, format!("kick is an admin command, and {} is not in this server's --admin-from", peer.ip())));
    }
    let KickParams { connection } = parse_params(raw)?;
    let kicked = ctx.shared.kick(connection);
    if kicked {
        info!(conn = ctx.conn, %peer, kicked = connection, "kicking a connection");
    }
    ctx.reply(&KickResult { kicked });
    Ok(())
}
