//! `lock`: take one or several keys, exclusive or shared, waiting up to `wait` seconds.

use std::time::Duration;

use pklock_proto::{ErrorBody, ErrorCode, LockParams};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};
use crate::mutation::Mutation;
use crate::reply::ReplyStyle;

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
    ctx.mutate(Mutation::Lock {
        owner: params.owner,
        keys: params.keys.0,
        mode: params.mode,
        wait,
        value: params.value,
        style,
        ends_at_ms: None,
    })
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
