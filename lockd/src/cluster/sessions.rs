//! Cluster sessions, as every node knows them from the log (which node serves each,
//! its epoch, the last request applied, its latest replies), plus what only this node
//! knows: which of its connections serves which session.
//!
//! Every node applies the same log, so every node holds the same records and the same
//! recent replies; that is what lets any node take a session over (`resume`) and answer
//! the requests whose replies were lost with the old node.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pklock_proto::{ResumeResult, HEADER_LEN};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::log::NodeNumber;
use crate::outbox::{Outbox, ReplySink};
use crate::reply::{encode_error, encode_result};
use crate::table::ConnId;

/// Replies kept per session for a client that resumes after losing them. pklock.so has
/// a handful of requests in flight at most.
const RECENT_REPLIES: usize = 32;

/// ... and at most this many bytes of them, the newest reply always kept: an `unlock` of
/// `--max-keys` long keys answers about a MiB listing them, and 32 of those per session,
/// on every node and in every snapshot, would be memory no limit counts.
const RECENT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    node: NodeNumber,
    epoch: u64,
    /// The last client request applied: a request resent with this id or a lower one
    /// is not applied again.
    applied_seq: u64,
    secret_digest: String,
    /// The latest replies by request id: their JSON, without the frame header (snapshots
    /// keep them as text).
    recent: VecDeque<(u64, Box<str>)>,
}

/// What a snapshot keeps of the sessions: everything the log made of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionsImage {
    records: Vec<(ConnId, Record)>,
    live_nodes: Vec<NodeNumber>,
}

/// Where this node sends a session's replies, and how it closes that connection.
#[derive(Debug, Clone)]
pub struct Route {
    pub outbox: Arc<Outbox>,
    pub closer: CancellationToken,
}

/// What a connection that asked to `resume` learns once its `Attach` is applied.
#[derive(Debug)]
pub struct Resumed {
    pub session: ConnId,
    pub epoch: u64,
    pub applied_seq: u64,
}

#[derive(Debug)]
struct PendingResume {
    route: Route,
    request_id: Value,
    pending: Vec<u64>,
    done: oneshot::Sender<Result<Resumed, ()>>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<ConnId, Record>,
    /// Nodes with a live lease, as the log says.
    live_nodes: HashSet<NodeNumber>,
    routes: HashMap<ConnId, Route>,
    resumes: HashMap<ConnId, PendingResume>,
    /// Until when this node's lease is surely alive (see `lease.rs`).
    lease_sure_until: Option<Instant>,
    /// Since when each of [`Sessions::orphans`] has been one.
    orphaned_since: HashMap<ConnId, Instant>,
}

impl Inner {
    /// Whether this node may still send replies. Once its lease may have lapsed (say the
    /// process was frozen), a reply could be about a session etcd already expired (a grant
    /// of a lock that is gone): every connection is closed instead, and their clients
    /// resume elsewhere and learn the truth there.
    fn may_reply(&mut self) -> bool {
        if self.lease_sure_until.is_some_and(|until| Instant::now() >= until) {
            for (_, route) in self.routes.drain() {
                route.closer.cancel();
            }
            for (_, resume) in self.resumes.drain() {
                resume.route.closer.cancel();
            }
            return false;
        }
        true
    }
}

#[derive(Debug)]
pub struct Sessions {
    me: NodeNumber,
    inner: Mutex<Inner>,
}

/// What applying an entry of a session found.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Apply,
    /// A resent request already applied, or one from a connection the session left.
    Skip,
    /// No such session (expired, closed, or never opened).
    Expired,
}

impl Sessions {
    pub fn new(me: NodeNumber) -> Self {
        Sessions { me, inner: Mutex::new(Inner::default()) }
    }

    pub fn image(&self) -> SessionsImage {
        let inner = self.inner.lock();
        let mut records: Vec<(ConnId, Record)> = inner.records.iter().map(|(&s, r)| (s, r.clone())).collect();
        records.sort_by_key(|(s, _)| *s);
        let mut live_nodes: Vec<NodeNumber> = inner.live_nodes.iter().copied().collect();
        live_nodes.sort_unstable();
        SessionsImage { records, live_nodes }
    }

    /// Takes the records of a snapshot; this node's own connections stay as they are.
    pub fn restore(&self, image: SessionsImage) {
        let mut inner = self.inner.lock();
        inner.records = image.records.into_iter().collect();
        inner.live_nodes = image.live_nodes.into_iter().collect();
    }

    /// Whether this node writes the snapshots: the live node with the lowest number, which
    /// every node agrees on because it follows from the log.
    pub fn writes_snapshots(&self) -> bool {
        self.inner.lock().live_nodes.iter().min() == Some(&self.me)
    }

    pub fn count(&self) -> usize {
        self.inner.lock().records.len()
    }

    pub fn node_alive(&self, node: NodeNumber) {
        self.inner.lock().live_nodes.insert(node);
    }

    /// A node's lease lapsed: returns the sessions it served, which are gone now, in the
    /// same order on every node (releasing them in turn grants their keys in that order).
    pub fn node_lapsed(&self, node: NodeNumber) -> Vec<ConnId> {
        let mut inner = self.inner.lock();
        inner.live_nodes.remove(&node);
        let mut gone: Vec<ConnId> = inner.records.iter().filter(|(_, r)| r.node == node).map(|(&s, _)| s).collect();
        gone.sort_unstable();
        for session in &gone {
            inner.records.remove(session);
            if let Some(route) = inner.routes.remove(session) {
                route.closer.cancel();
            }
        }
        gone
    }

    pub fn open(&self, session: ConnId, node: NodeNumber, secret_digest: String) {
        let mut inner = self.inner.lock();
        if inner.live_nodes.contains(&node) && !inner.records.contains_key(&session) {
            inner.records.insert(session, Record { node, epoch: 0, applied_seq: 0, secret_digest, recent: VecDeque::new() });
        }
    }

    /// Whether a request of `session` from connection `epoch` with sequence number `seq`
    /// (0: made by a node) is applied; marks it applied.
    pub fn admit(&self, session: ConnId, epoch: u64, seq: u64) -> Admit {
        let mut inner = self.inner.lock();
        let Some(record) = inner.records.get_mut(&session) else {
            return Admit::Expired;
        };
        if record.epoch != epoch || (seq != 0 && seq <= record.applied_seq) {
            return Admit::Skip;
        }
        record.applied_seq = record.applied_seq.max(seq);
        Admit::Apply
    }

    /// Removes a session whose connection `epoch` closed; false if it had moved on.
    pub fn close(&self, session: ConnId, epoch: u64) -> bool {
        let mut inner = self.inner.lock();
        if inner.records.get(&session).is_none_or(|r| r.epoch != epoch) {
            return false;
        }
        inner.records.remove(&session);
        inner.routes.remove(&session);
        true
    }

    /// `node` takes `session` over. On that node, the connection that asked is told,
    /// then served; on the node that served it before, its old connection is closed.
    pub fn attach(&self, session: ConnId, node: NodeNumber) {
        let mut inner = self.inner.lock();
        let pending = if node == self.me && inner.may_reply() { inner.resumes.remove(&session) } else { None };
        let Some(record) = inner.records.get_mut(&session) else {
            if let Some(p) = pending {
                let mut frame = Vec::new();
                encode_error(&mut frame, &p.request_id, &super::session_expired());
                p.route.outbox.send_from_other(&frame);
                let _ = p.done.send(Err(()));
            }
            return;
        };
        record.node = node;
        record.epoch += 1;
        let (epoch, applied_seq) = (record.epoch, record.applied_seq);
        let mut frame = Vec::new();
        if let Some(p) = &pending {
            let resend = p.pending.iter().copied().filter(|&id| id > applied_seq).collect();
            encode_result(&mut frame, &p.request_id, &ResumeResult { resumed: true, resend });
            for (id, reply) in &record.recent {
                if p.pending.contains(id) {
                    frame.extend_from_slice(&(reply.len() as u32).to_be_bytes());
                    frame.extend_from_slice(reply.as_bytes());
                }
            }
        }
        if let Some(old) = inner.routes.remove(&session) {
            old.closer.cancel();
        }
        if let Some(p) = pending {
            p.route.outbox.send_from_other(&frame);
            inner.routes.insert(session, p.route);
            let _ = p.done.send(Ok(Resumed { session, epoch, applied_seq }));
        }
    }

    /// Checks a `resume`'s secret; `None` if the session is unknown here.
    pub fn secret_matches(&self, session: ConnId, digest: &str) -> Option<bool> {
        use subtle::ConstantTimeEq;
        let inner = self.inner.lock();
        let record = inner.records.get(&session)?;
        Some(record.secret_digest.as_bytes().ct_eq(digest.as_bytes()).into())
    }

    /// Registers a connection waiting for its `Attach` to be applied.
    pub fn expect_resume(&self, session: ConnId, route: Route, request_id: Value, pending: Vec<u64>) -> oneshot::Receiver<Result<Resumed, ()>> {
        let (done, rx) = oneshot::channel();
        self.inner.lock().resumes.insert(session, PendingResume { route, request_id, pending, done });
        rx
    }

    pub fn forget_resume(&self, session: ConnId) {
        self.inner.lock().resumes.remove(&session);
    }

    /// This node serves `session` through `route` from now on.
    pub fn serve(&self, session: ConnId, route: Route) {
        self.inner.lock().routes.insert(session, route);
    }

    /// This node stops serving `session` (its connection ended).
    pub fn unroute(&self, session: ConnId) {
        self.inner.lock().routes.remove(&session);
    }

    /// Sessions the log says this node serves but no connection here does, for `ttl` or
    /// longer, with their epochs. Their connections ended without a release (closed while
    /// the lease was in doubt, or a resume that never finished); their clients could resume
    /// them elsewhere within the TTL, as after a node's death. Past it nobody will, yet the
    /// lease lives on: they are due to be closed. Each is returned once per `ttl`.
    pub fn orphans(&self, ttl: Duration) -> Vec<(ConnId, u64)> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let Inner { records, routes, resumes, orphaned_since, .. } = &mut *inner;
        let orphaned = |session: &ConnId, record: &Record| record.node == self.me && !routes.contains_key(session) && !resumes.contains_key(session);
        orphaned_since.retain(|session, _| records.get(session).is_some_and(|record| orphaned(session, record)));
        let mut due = Vec::new();
        for (session, record) in records.iter().filter(|(session, record)| orphaned(session, record)) {
            let since = orphaned_since.entry(*session).or_insert(now);
            if now.duration_since(*since) >= ttl {
                *since = now;
                due.push((*session, record.epoch));
            }
        }
        due.sort_unstable();
        due
    }

    /// Whether this node serves `session` now.
    pub fn serves(&self, session: ConnId) -> bool {
        self.inner.lock().routes.contains_key(&session)
    }

    /// Ends the connection serving `session` here, if any.
    pub fn close_route(&self, session: ConnId) {
        if let Some(route) = self.inner.lock().routes.remove(&session) {
            route.closer.cancel();
        }
    }

    /// Closes every connection this node serves (its lease may lapse: they must not go on
    /// believing they hold locks).
    pub fn close_all_routes(&self) {
        for (_, route) in self.inner.lock().routes.drain() {
            route.closer.cancel();
        }
    }

    /// The reply `frame` to request `seq` of `session`: kept for a resume, and sent if this
    /// node serves the session.
    pub fn deliver(&self, session: ConnId, seq: Option<u64>, frame: &[u8]) {
        let mut inner = self.inner.lock();
        if let (Some(seq), Some(record)) = (seq, inner.records.get_mut(&session)) {
            // One reply frame, which is JSON after its header.
            if let Some(json) = frame.get(HEADER_LEN..).and_then(|j| std::str::from_utf8(j).ok()) {
                record.recent.push_back((seq, json.into()));
                keep_recent_within_bounds(&mut record.recent);
            }
        }
        if !inner.may_reply() {
            return;
        }
        if let Some(route) = inner.routes.get(&session) {
            route.outbox.send_from_other(frame);
        }
    }

    /// Sends `frame` to `session`'s connection on this node without keeping it (an error
    /// about a request that was not applied).
    pub fn send_local(&self, session: ConnId, frame: &[u8]) {
        let mut inner = self.inner.lock();
        if !inner.may_reply() {
            return;
        }
        if let Some(route) = inner.routes.get(&session) {
            route.outbox.send_from_other(frame);
        }
    }

    /// The lease was renewed: replies may go out until `until`.
    pub fn lease_sure_until(&self, until: Instant) {
        self.inner.lock().lease_sure_until = Some(until);
    }

    /// How much longer this node may reply without renewing its lease (zero once its
    /// connections are being closed).
    pub fn lease_sure_for(&self) -> Duration {
        self.inner.lock().lease_sure_until.map_or(Duration::ZERO, |until| until.saturating_duration_since(Instant::now()))
    }
}

/// Where a cluster session's waiting request is answered: whichever node serves the
/// session then, and the session's recent replies on every node.
#[derive(Debug)]
pub struct SessionSink {
    pub sessions: Arc<Sessions>,
    pub session: ConnId,
}

impl ReplySink for SessionSink {
    fn deliver(&self, id: &Value, frame: &[u8]) {
        self.sessions.deliver(self.session, id.as_u64(), frame);
    }
}

/// Drops the oldest replies past [`RECENT_REPLIES`] or [`RECENT_BYTES`], never the newest.
/// Every node keeps the same replies, so every node drops the same.
fn keep_recent_within_bounds(recent: &mut VecDeque<(u64, Box<str>)>) {
    let mut bytes: usize = recent.iter().map(|(_, reply)| reply.len()).sum();
    while recent.len() > RECENT_REPLIES || (recent.len() > 1 && bytes > RECENT_BYTES) {
        let (_, dropped) = recent.pop_front().expect("more than one reply is kept");
        bytes -= dropped.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kept replies of `session`: (request id, bytes).
    fn kept(sessions: &Sessions, session: ConnId) -> Vec<(u64, usize)> {
        sessions.inner.lock().records[&session].recent.iter().map(|(id, reply)| (*id, reply.len())).collect()
    }

    fn reply_frame(bytes: usize) -> Vec<u8> {
        let mut frame = vec![0; HEADER_LEN];
        frame.extend(std::iter::repeat_n(b'x', bytes));
        frame
    }

    #[test]
    fn replies_kept_for_a_resume_are_bounded_in_count_and_bytes() {
        let sessions = Sessions::new(1);
        sessions.node_alive(1);
        sessions.open(7, 1, String::new());
        for id in 1..=100 {
            sessions.deliver(7, Some(id), &reply_frame(100));
        }
        let small = kept(&sessions, 7);
        assert_eq!(small.len(), RECENT_REPLIES, "at most {RECENT_REPLIES} replies");
        assert_eq!(small.last().unwrap().0, 100, "the newest is kept");
        // An attacker's big replies (a long unlock echoes its keys): bytes stay bounded.
        for id in 101..=200 {
            sessions.deliver(7, Some(id), &reply_frame(20_000));
        }
        let big = kept(&sessions, 7);
        assert!(big.iter().map(|(_, n)| n).sum::<usize>() <= RECENT_BYTES, "{big:?}");
        assert_eq!(big.last().unwrap().0, 200);
        // A reply larger than the bound alone is still kept, until a newer one comes.
        sessions.deliver(7, Some(201), &reply_frame(1 << 20));
        assert_eq!(kept(&sessions, 7), [(201, 1 << 20)]);
        sessions.deliver(7, Some(202), &reply_frame(100));
        assert_eq!(kept(&sessions, 7), [(202, 100)]);
    }

    #[test]
    fn a_lapsed_node_s_sessions_come_in_the_same_order_on_every_node() {
        let lapsed_on_a_node = || {
            let sessions = Sessions::new(2);
            sessions.node_alive(1);
            for session in [907, 13, 501, 77, 300, 2, 64] {
                sessions.open(session, 1, String::new());
            }
            sessions.node_lapsed(1)
        };
        for _ in 0..8 {
            assert_eq!(lapsed_on_a_node(), [2, 13, 64, 77, 300, 501, 907]);
        }
    }
}
