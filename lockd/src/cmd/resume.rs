//! `resume` (cluster mode): this connection takes over a session whose node was lost.
//! Checking the secret and writing the takeover to the log need etcd, so the command
//! only records the request; the connection finishes it (see
//! [`crate::cluster::Node::finish_resume`]) before it reads anything else.

use pklock_proto::{ErrorBody, ErrorCode, ResumeParams};
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: ResumeParams = parse_params(raw)?;
    let Some(session) = ctx.session.as_mut() else {
        return Err(ErrorBody::new(ErrorCode::BadRequest, "resume is for cluster nodes; this lockd is a single server (docs/CLUSTER.md)"));
    };
    session.resume_asked = Some((ctx.id.clone(), params));
    Ok(())
}
