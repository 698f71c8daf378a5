//! Cluster mode (`--cluster etcd://...`): several lockd nodes serve one lock table whose
//! inputs etcd orders. Design and guarantees: docs/CLUSTER.md.
//!
//! etcd holds one totally ordered log of requests under the cluster prefix; every node
//! applies that log, in revision order, to its own copy of the same pure lock table
//! ([`crate::state::State`] through [`crate::mutation::Mutation::apply`]), so every node
//! reaches the same grants, tokens and refusals, and the node serving a session sends its
//! replies. Time never enters the table: a wait's end is itself a log entry, written by
//! the node that serves the waiting session.
//!
//! - [`log`]: the entries and the key layout under the prefix.
//! - [`sessions`]: every session as the log says, and which this node serves.
//! - [`proposer`]: writes what this node's clients ask, batched into one etcd transaction.
//! - [`applier`]: watches the log and applies it.
//! - [`lease`]: this node's lease: its sessions live as long as it does.
//! - [`limits`]: the table limits every node must share.
//! - [`snapshot`]: the table and sessions as data, so the log can be deleted behind them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, SortOrder, SortTarget, TlsOptions, Txn, TxnOp};
use pklock_proto::auth::Nonce;
use pklock_proto::{ErrorBody, ErrorCode, ResumeParams, SessionInfo};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::mutation::Mutation;
use crate::reply::encode_error;
use crate::outbox::Outbox;
use crate::state::State;
use crate::table::{ConnId, Limits};

pub mod applier;
pub mod lease;
pub mod limits;
pub mod log;
pub mod proposer;
pub mod sessions;
pub mod snapshot;

use log::{Entry, Keys, NodeNumber, Op};
use sessions::{Route, SessionSink, Sessions};

/// How long one etcd request may take before the node treats etcd as unreachable.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// The `--cluster` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Run as a node of a cluster whose state lives in etcd: etcd://HOST:PORT[,HOST:PORT...]
    /// (docs/CLUSTER.md). Without it lockd is a single server.
    #[arg(long = "cluster", value_name = "ETCD_URLS", value_parser = parse_etcd_urls)]
    pub etcd: Option<EtcdEndpoints>,

    /// The etcd key prefix of this cluster: nodes on the same prefix form one lock service.
    #[arg(long, value_name = "PREFIX", default_value = "/pklock/default")]
    pub cluster_prefix: String,

    /// A name for this node in logs and `stat` (default: the host name).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,

    /// Seconds a session (and its locks) outlives the loss of its node, so that its
    /// client can resume it on another node. Also the lease TTL of each node.
    #[arg(long, value_name = "SECONDS", default_value = "15", value_parser = parse_ttl)]
    pub session_ttl: u64,

    /// Write a snapshot of the table every this many etcd revisions, then delete the log
    /// it covers (docs/CLUSTER.md, "Snapshots").
    #[arg(long, value_name = "REVISIONS", default_value_t = 10_000)]
    pub snapshot_every: i64,

    /// Make every fencing token issued from now on greater than this: after restoring etcd
    /// from a backup without `--bump-revision`, give the highest token your protected
    /// resources have seen (docs/CLUSTER.md, "Fencing tokens"). Written to the log, so one
    /// node given it raises the whole cluster's tokens.
    #[arg(long, value_name = "TOKEN")]
    pub raise_tokens_above: Option<u64>,

    /// Speak TLS to etcd, trusting the CA certificate in this PEM file.
    #[arg(long, value_name = "PATH")]
    pub etcd_ca_file: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for etcd's --client-cert-auth, with --etcd-key-file.
    #[arg(long, value_name = "PATH", requires_all = ["etcd_key_file", "etcd_ca_file"])]
    pub etcd_cert_file: Option<std::path::PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "PATH", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<std::path::PathBuf>,

    /// etcd user (with --etcd-password-file), when etcd has authentication on.
    #[arg(long, value_name = "NAME", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,

    /// File holding the etcd user's password (one trailing newline is ignored).
    #[arg(long, value_name = "PATH", requires = "etcd_user")]
    pub etcd_password_file: Option<std::path::PathBuf>,
}

impl ClusterArgs {
    pub fn enabled(&self) -> bool {
        self.etcd.is_some()
    }
}

/// etcd's client URLs, from `--cluster`.
#[derive(Debug, Clone)]
pub struct EtcdEndpoints(pub Vec<String>);

fn parse_etcd_urls(s: &str) -> Result<EtcdEndpoints, String> {
    let rest = s.strip_prefix("etcd://").ok_or("expected etcd://HOST:PORT[,HOST:PORT...]")?;
    let endpoints: Vec<String> = rest.split(',').map(str::trim).filter(|e| !e.is_empty()).map(|e| format!("http://{e}")).collect();
    if endpoints.is_empty() {
        return Err("no etcd endpoint given".into());
    }
    Ok(EtcdEndpoints(endpoints))
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(ttl) if ttl >= 2 => Ok(ttl),
        _ => Err(format!("expected whole seconds >= 2 (etcd's minimum lease is about 1.5 election timeouts), got {s:?}")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {ETCD_TIMEOUT:?} ({0})")]
    Timeout(&'static str),
    #[error(
        "this node's limits differ from the cluster's ({config}): {differences}; every node must apply \
         the same limits to reach the same decisions, so start this node with the cluster's"
    )]
    LimitsDiffer { config: String, differences: String },
    #[error("the cluster's limits ({config}) cannot be used: {problem}")]
    UnreadableLimits { config: String, problem: String },
    #[error("unreadable snapshot: {0}")]
    BadSnapshot(serde_json::Error),
    #[error("the task encoding a snapshot failed: {0}")]
    SnapshotTask(tokio::task::JoinError),
    #[error("the snapshot of revision {revision} has {found} of its {expected} chunks")]
    SnapshotIncomplete { revision: i64, found: usize, expected: usize },
    #[error("reading {path}: {source}")]
    ReadFile { path: String, source: std::io::Error },
}

fn read(path: &std::path::Path) -> Result<String, ClusterError> {
    std::fs::read_to_string(path).map_err(|source| ClusterError::ReadFile { path: path.display().to_string(), source })
}

/// Runs an etcd request within [`ETCD_TIMEOUT`].
async fn etcd<T>(what: &'static str, request: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, ClusterError> {
    match tokio::time::timeout(ETCD_TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClusterError::Timeout(what)),
    }
}

/// This node of the cluster.
pub struct Node {
    pub me: NodeNumber,
    name: String,
    keys: Keys,
    ttl: Duration,
    client: Client,
    pub sessions: Arc<Sessions>,
    proposals: mpsc::UnboundedSender<proposer::Proposal>,
    /// The highest etcd revision applied.
    applied: watch::Receiver<i64>,
    /// The lease is kept alive (see [`lease`]).
    lease_ok: AtomicBool,
    /// The last batch was written (see [`proposer`]).
    log_ok: AtomicBool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("me", &self.me).field("name", &self.name).finish_non_exhaustive()
    }
}

/// A connection's part in cluster mode: the session it is.
#[derive(Debug)]
pub struct ClientSession {
    pub id: ConnId,
    secret: Nonce,
    /// The session's `Open` was written (by the first request that changes the table).
    opened: bool,
    epoch: u64,
    /// The last request id sent to the log: ids must increase.
    last_seq: u64,
    /// Cancelled when the connection must close: its session moved to another node, or
    /// this node may have lost its lease.
    pub closer: CancellationToken,
    /// A `resume` request read, for the connection to finish.
    pub resume_asked: Option<(Value, ResumeParams)>,
}

impl Node {
    /// Joins the cluster: checks the limits, takes a node number and a lease, replays the
    /// log into `state`, and starts writing and applying it.
    pub async fn join(args: &ClusterArgs, limits: Limits, state: Arc<State>) -> Result<Arc<Node>, ClusterError> {
        let mut endpoints = args.etcd.clone().expect("join is called in cluster mode").0;
        let mut options = ConnectOptions::new().with_connect_timeout(ETCD_TIMEOUT).with_keep_alive(Duration::from_secs(2), ETCD_TIMEOUT);
        if let (Some(user), Some(path)) = (&args.etcd_user, &args.etcd_password_file) {
            let password = read(path)?;
            options = options.with_user(user, password.strip_suffix('\n').unwrap_or(&password));
        }
        if let Some(ca) = &args.etcd_ca_file {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&args.etcd_cert_file, &args.etcd_key_file) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
            endpoints = endpoints.iter().map(|e| e.replacen("http://", "https://", 1)).collect();
        }
        let mut client = etcd("connect", Client::connect(&endpoints, Some(options))).await?;
        let keys = Keys::new(&args.cluster_prefix);
        limits::agree(&mut client, &keys, &limits).await?;
        let me = take_node_number(&mut client, &keys).await?;
        let name = args.node_id.clone().unwrap_or_else(|| format!("node-{me}"));
        let ttl = Duration::from_secs(args.session_ttl);
        let (lease_id, registered_at) = lease::register(&mut client, &keys, me, &name, ttl).await?;
        info!(node = me, name, lease = lease_id, "joined the cluster");

        let sessions = Arc::new(Sessions::new(me));
        let (applied_tx, applied) = watch::channel(0);
        let (proposals, queue) = mpsc::unbounded_channel();
        let node = Arc::new(Node {
            me,
            name,
            keys: keys.clone(),
            ttl,
            client: client.clone(),
            sessions: sessions.clone(),
            proposals,
            applied,
            lease_ok: AtomicBool::new(true),
            log_ok: AtomicBool::new(true),
        });
        tokio::spawn(applier::run(client.clone(), keys, state, sessions, applied_tx, args.snapshot_every.max(1)));
        tokio::spawn(proposer::run(node.clone(), client.clone(), queue));
        tokio::spawn(lease::keep_alive(node.clone(), client, lease_id));
        node.wait_applied(registered_at).await;
        if let Some(above) = args.raise_tokens_above {
            let (done, landed) = tokio::sync::oneshot::channel();
            let _ = node.proposals.send(proposer::Proposal::new(Entry::by_node(0, 0, Op::RaiseTokens { above }), Some(done)));
            match landed.await {
                Ok(Some(revision)) => {
                    node.wait_applied(revision).await;
                    info!(above, "fencing tokens raised");
                }
                _ => return Err(ClusterError::Timeout("raising the fencing tokens")),
            }
        }
        Ok(node)
    }

    /// Whether this node can take requests: its lease is alive and etcd takes its writes.
    pub fn available(&self) -> bool {
        self.lease_ok.load(Ordering::Relaxed) && self.log_ok.load(Ordering::Relaxed)
    }

    pub fn unavailable(&self) -> ErrorBody {
        Self::unavailable_error()
    }

    fn unavailable_error() -> ErrorBody {
        ErrorBody::new(ErrorCode::Unavailable, "this lockd node cannot reach a quorum of etcd; try another node")
    }

    /// The session of new connection `conn` (its id is the connection's, unique in the
    /// cluster; it is written to the log only when it first changes the table).
    pub fn new_session(&self, conn: ConnId) -> ClientSession {
        ClientSession {
            id: conn,
            secret: Nonce::random().expect("the OS random source works"),
            opened: false,
            epoch: 0,
            last_seq: 0,
            closer: CancellationToken::new(),
            resume_asked: None,
        }
    }

    /// What `hello` tells the client about its session.
    pub fn session_info(&self, session: &ClientSession) -> SessionInfo {
        SessionInfo { id: session.id.to_string(), secret: session.secret.as_str().to_owned(), ttl: self.ttl.as_secs_f64() }
    }

    fn submit(&self, entry: Entry) {
        let _ = self.proposals.send(proposer::Proposal::new(entry, None));
    }

    /// Sends a client's request to the log; its reply comes when this node applies it.
    pub fn submit_request(&self, session: &mut ClientSession, outbox: &Arc<Outbox>, id: &Value, mut mutation: Mutation) -> Result<(), ErrorBody> {
        // An integer id is the request's sequence number, by which a resend after a resume
        // is applied once; other ids are allowed but not deduplicated.
        let (seq, other_id) = match id.as_u64() {
            Some(seq) if seq > session.last_seq => (seq, None),
            Some(_) => {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("in cluster mode integer request ids must increase along the session (the last was {})", session.last_seq),
                ))
            }
            None => (0, Some(id.clone())),
        };
        if !self.available() {
            return Err(Self::unavailable_error());
        }
        let mut timed = None;
        if let Mutation::Lock { wait: Some(wait), ends_at_ms, owner, .. } = &mut mutation {
            if !wait.is_zero() {
                let at = unix_ms().saturating_add(wait.as_millis().try_into().unwrap_or(u64::MAX));
                *ends_at_ms = Some(at);
                timed = Some((*owner, at));
            }
        }
        let proposal = proposer::Proposal::new(Entry { session: session.id, epoch: session.epoch, seq, id: other_id, op: Op::Mutate(mutation) }, None);
        if proposal.json.len() > proposer::MAX_ENTRY_BYTES {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!(
                    "this request takes {} bytes in the cluster log, over the {} one etcd write carries; \
                     send fewer or shorter keys, or a shorter id (docs/CLUSTER.md, \"Request size\")",
                    proposal.json.len(),
                    proposer::MAX_ENTRY_BYTES
                ),
            ));
        }
        if !session.opened {
            self.sessions.serve(session.id, Route { outbox: outbox.clone(), closer: session.closer.clone() });
            let secret_digest = digest(session.secret.as_str());
            self.submit(Entry::by_node(session.id, 0, Op::Open { node: self.me, secret_digest }));
            session.opened = true;
        }
        session.last_seq = session.last_seq.max(seq);
        let _ = self.proposals.send(proposal);
        if let Some((owner, at)) = timed {
            self.arm_time_out(session.id, session.epoch, owner, id.clone(), at);
        }
        Ok(())
    }

    /// Ends a wait when its time comes, if this node still serves the session then.
    fn arm_time_out(self: &Node, session: ConnId, epoch: u64, owner: u64, request: Value, at_ms: u64) {
        let (sessions, proposals) = (self.sessions.clone(), self.proposals.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(at_ms.saturating_sub(unix_ms()))).await;
            if sessions.serves(session) {
                let entry = Entry::by_node(session, epoch, Op::Mutate(Mutation::TimeOut { owner, request }));
                let _ = proposals.send(proposer::Proposal::new(entry, None));
            }
        });
    }

    /// Runs a `resume` the connection read: checks the secret, writes the takeover and
    /// waits until this node applied it. The reply (and the replies the client missed) is
    /// sent when the takeover is applied (see [`Sessions::attach`]); errors go to `out`.
    pub async fn finish_resume(&self, state: &State, session: &mut ClientSession, outbox: &Arc<Outbox>, out: &mut Vec<u8>) {
        let Some((id, params)) = session.resume_asked.take() else { return };
        if let Err(err) = self.resume(state, session, outbox, &id, params).await {
            encode_error(out, &id, &err);
        }
    }

    async fn resume(&self, state: &State, session: &mut ClientSession, outbox: &Arc<Outbox>, id: &Value, params: ResumeParams) -> Result<(), ErrorBody> {
        if session.opened {
            return Err(ErrorBody::new(ErrorCode::BadRequest, "resume must come before any request that changes locks on this connection"));
        }
        if !self.available() {
            return Err(Self::unavailable_error());
        }
        let target: ConnId = params.session.parse().map_err(|_| session_expired())?;
        // The session's Open may not be applied here yet: catch up with what etcd has.
        self.catch_up().await?;
        match self.sessions.secret_matches(target, &digest(&params.secret)) {
            None => return Err(session_expired()),
            Some(false) => return Err(ErrorBody::new(ErrorCode::AuthFailed, "wrong secret for this session")),
            Some(true) => {}
        }
        let route = Route { outbox: outbox.clone(), closer: session.closer.clone() };
        let attached = self.sessions.expect_resume(target, route, id.clone(), params.pending);
        self.submit(Entry::by_node(target, 0, Op::Attach { node: self.me }));
        let resumed = match tokio::time::timeout(2 * ETCD_TIMEOUT, attached).await {
            Ok(Ok(Ok(resumed))) => resumed,
            // Expired meanwhile: the reply was sent.
            Ok(Ok(Err(()))) => return Ok(()),
            _ => {
                self.sessions.forget_resume(target);
                return Err(Self::unavailable_error());
            }
        };
        session.id = resumed.session;
        session.epoch = resumed.epoch;
        session.last_seq = resumed.applied_seq;
        session.opened = true;
        // This node times the session's waits now.
        let mut timed = Vec::new();
        state.visit_waiters(resumed.session, |owner, waiter| {
            if let Some(at) = waiter.ends_at_ms {
                timed.push((owner.handle, waiter.id.clone(), at));
            }
        });
        for (owner, request, at) in timed {
            self.arm_time_out(resumed.session, resumed.epoch, owner, request, at);
        }
        info!(session = resumed.session, epoch = resumed.epoch, "session resumed on this node");
        Ok(())
    }

    /// The connection of `session` ended. A clean end releases its locks, and returns once
    /// this node applied the release (as a single lockd releases before it closes the
    /// socket); a node that is closing or lost its lease leaves them to the session's TTL
    /// instead, so its clients can resume elsewhere.
    pub async fn disconnected(&self, session: &ClientSession, release: bool) {
        if !session.opened {
            return;
        }
        self.sessions.unroute(session.id);
        if !release {
            return;
        }
        let (done, landed) = tokio::sync::oneshot::channel();
        let entry = Entry::by_node(session.id, session.epoch, Op::Close);
        let _ = self.proposals.send(proposer::Proposal::new(entry, Some(done)));
        let applied = async {
            if let Ok(Some(revision)) = landed.await {
                self.wait_applied(revision).await;
            }
        };
        let _ = tokio::time::timeout(2 * ETCD_TIMEOUT, applied).await;
    }

    /// Waits until this node has applied everything etcd held when this was called.
    async fn catch_up(&self) -> Result<(), ErrorBody> {
        let options = GetOptions::new().with_prefix().with_keys_only().with_limit(1).with_sort(SortTarget::Mod, SortOrder::Descend);
        let mut client = self.client.clone();
        let latest = etcd("catch up", client.get(self.keys.all(), Some(options))).await.map_err(|e| {
            warn!(error = %e, "cannot read etcd");
            Self::unavailable_error()
        })?;
        let revision = latest.kvs().first().map_or(0, |kv| kv.mod_revision());
        if tokio::time::timeout(ETCD_TIMEOUT, self.wait_applied(revision)).await.is_err() {
            return Err(Self::unavailable_error());
        }
        Ok(())
    }

    async fn wait_applied(&self, revision: i64) {
        let mut applied = self.applied.clone();
        let _ = applied.wait_for(|&a| a >= revision).await;
    }

    /// The `cluster` member of `stat`.
    pub fn stat(&self) -> Value {
        json!({
            "node": self.me,
            "name": self.name,
            "available": self.available(),
            "lease_sure_for": self.sessions.lease_sure_for().as_secs_f64(),
            "applied_revision": *self.applied.borrow(),
            "sessions": self.sessions.count(),
            "session_ttl": self.ttl.as_secs_f64(),
        })
    }

    /// A sink for the waits of `session`, answered wherever it is served then.
    pub fn sink(sessions: &Arc<Sessions>, session: ConnId) -> Arc<SessionSink> {
        Arc::new(SessionSink { sessions: sessions.clone(), session })
    }
}

fn session_expired() -> ErrorBody {
    ErrorBody::new(ErrorCode::SessionExpired, "the session expired or was closed; its locks were released")
}

/// What the log keeps of a session secret: enough to check one, not to use it.
fn digest(secret: &str) -> String {
    let hash = Sha256::new().chain_update(b"pklock-session-v1\n").chain_update(secret.as_bytes()).finalize();
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A number no other node of this cluster ever had (compare-and-swap on a counter).
async fn take_node_number(client: &mut Client, keys: &Keys) -> Result<NodeNumber, ClusterError> {
    loop {
        let current = etcd("reading the node counter", client.get(keys.node_counter(), None)).await?;
        let (last, revision) = current.kvs().first().map_or((0, 0), |kv| {
            (std::str::from_utf8(kv.value()).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0), kv.mod_revision())
        });
        let next = last + 1;
        let txn = Txn::new()
            .when([Compare::mod_revision(keys.node_counter(), CompareOp::Equal, revision)])
            .and_then([TxnOp::put(keys.node_counter(), next.to_string(), None)]);
        if etcd("taking a node number", client.txn(txn)).await?.succeeded() {
            return Ok(next);
        }
    }
}
