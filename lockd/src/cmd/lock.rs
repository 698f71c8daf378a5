//! `lock`: take one or several keys, exclusive or shared, waiting up to `wait` seconds.

use std::time::{Duration, Instant};

use pklock_proto::{ErrorBody, ErrorCode, LegacyLockResult, LockParams, LockResult};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};
use crate::state::{ReplyStyle, Waiter};
use crate::table::{Acquired, LockRequest, Owner};

/// Tells pkLockServer's `{"lockName": ...}` requests apart, which get its reply shape.
#[derive(Deserialize)]
struct PkLockServerProbe {
    #[serde(rename = "lockName")]
    lock_name: Option<IgnoredAny>,
}

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: LockParams = parse_params(raw)?;
    // The second parse only when the text could hold the old spelling (hot path).
    let style = match raw.filter(|r| r.get().contains("\"lockName\"")).map(|r| serde_json::from_str::<PkLockServerProbe>(r.get())) {
        Some(Ok(PkLockServerProbe { lock_name: Some(_) })) => ReplyStyle::PkLockServer,
        _ => ReplyStyle::Native,
    };
    let wait = wait_duration(params.wait)?;
    let request = LockRequest { owner: Owner { conn: ctx.conn, handle: params.owner }, keys: &params.keys.0, mode: params.mode, wait };
    let mut woken = Vec::new();
    let acquired = ctx.shared.table().lock(
        request,
        Instant::now(),
        || Waiter { outbox: ctx.outbox.clone(), id: ctx.id.clone(), style },
        &mut woken,
    );
    ctx.shared.deliver(woken);
    match (acquired?, style) {
        (Acquired::Granted { token }, ReplyStyle::Native) => ctx.reply(&LockResult { granted: true, token: Some(token) }),
        (Acquired::Granted { .. }, ReplyStyle::PkLockServer) => ctx.reply(&LegacyLockResult { status: "ok".into() }),
        (Acquired::Busy, ReplyStyle::Native) => ctx.reply(&LockResult { granted: false, token: None }),
        (Acquired::Busy, ReplyStyle::PkLockServer) => ctx.reply(&LegacyLockResult { status: "busy".into() }),
        (Acquired::Queued, _) => {
            if wait.is_some() {
                ctx.shared.deadline_added.notify_one();
            }
        }
    }
    Ok(())
}

/// `None` (absent or null) waits as long as it takes; so does a wait too long to
/// represent. Negative, NaN and infinite values are refused.
fn wait_duration(wait: Option<f64>) -> Result<Option<Duration>, ErrorBody> {
    match wait {
        None => Ok(None),
        Some(secs) if secs.is_finite() && secs >= 0.0 => Ok(Duration::try_from_secs_f64(secs).ok()),
        Some(secs) => Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("\"wait\" must be seconds >= 0, or null to wait as long as it takes; got {secs}"),
        )),
    }
}
