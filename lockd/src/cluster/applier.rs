//! Applies the cluster's log: watches everything under the prefix from the first
//! revision on, and applies each batch and each node's lapse, in revision order, to this
//! node's table. Every node runs the same loop over the same history, so every node
//! holds the same table.
//!
//! The watch is only the transport: after an error it is reopened from the revision
//! after the last one applied, so nothing is applied twice or skipped. And it is not
//! trusted blindly: etcd 3.4/3.5 have had bugs that drop or repeat watch events around
//! compactions and leader changes (etcd-io/etcd#18089, #19179, #20655). Each node numbers
//! its batches 0, 1, 2... and writes each once, in order, so [`BatchOrder`] sees a
//! repeat (skipped) or a gap: the node's table may then differ from the others', and it
//! exits (code 2) to start again from the snapshot, its clients resuming elsewhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::log::{Entry, KeyKind, Keys, NodeNumber, Op, ABORTED};
use super::sessions::{Admit, Sessions};
use super::snapshot::{self, Writer};
use super::{etcd, Node};
use crate::mutation::Mutation;
use crate::reply::encode_error;
use crate::state::State;

/// Fencing tokens granted by the batch at revision R are above R << TOKEN_SHIFT: they
/// grow with etcd's revisions, across every restart of every node and of the cluster.
pub const TOKEN_SHIFT: u32 = 20;

pub async fn run(client: Client, keys: Keys, state: Arc<State>, sessions: Arc<Sessions>, applied: watch::Sender<i64>, snapshot_every: i64) {
    let (loaded, mut next) = load_snapshot(&client, &keys, &state, &sessions).await;
    applied.send_replace(loaded);
    let mut snapshots = Writer::new(loaded);
    let mut order = BatchOrder::default();
    loop {
        // History (a node that starts, or reopens its watch) comes from etcd up to 1000
        // revisions per response unless fragmented: with batches of up to a MiB that is
        // far above the client's default 4 MiB message limit, and the watch would break on
        // it again at every reopening. Fragments are at most etcd's --max-request-bytes,
        // or one event (which etcd took as one request): that bounds them, whatever the
        // operator set, so the client takes any size. A revision's events may come split
        // over fragments; only those of `nodes/` and `log/` matter, one per revision.
        let mut watch_client = client.watch_client().max_decoding_message_size(usize::MAX);
        let options = WatchOptions::new().with_prefix().with_start_revision(next).with_fragment();
        let mut stream = match watch_client.watch(keys.all(), Some(options)).await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, "cannot watch the cluster log; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "the watch of the cluster log broke; reopening it");
                    break;
                }
            };
            if response.canceled() {
                // The history this node still needs was compacted: a snapshot covers it.
                warn!(compacted_to = response.compact_revision(), "this node fell behind a compaction of the log; loading the snapshot");
                let (loaded, from) = load_snapshot(&client, &keys, &state, &sessions).await;
                if from < response.compact_revision() {
                    error!(loaded, compacted_to = response.compact_revision(), "no snapshot covers the compacted history of this cluster; it cannot be rebuilt");
                    std::process::exit(2);
                }
                next = from;
                order = BatchOrder::default();
                applied.send_replace(loaded);
                break;
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                let kind = keys.classify(kv.key());
                if let (EventType::Put, KeyKind::Batch { node, number }) = (event.event_type(), kind) {
                    match order.see(node, number) {
                        Seen::Next => {}
                        Seen::Repeat => {
                            warn!(node, number, revision, "the watch repeated a batch already applied; skipped");
                            continue;
                        }
                        Seen::Gap { expected } => {
                            error!(node, expected, got = number, revision, "the watch of the cluster log skipped a batch; this node's table may differ from the others', so it exits to start again from the snapshot");
                            std::process::exit(2);
                        }
                    }
                }
                match (event.event_type(), kind) {
                    (EventType::Put, KeyKind::Batch { .. }) if kv.value() != ABORTED => apply_batch(&state, &sessions, revision, kv.value()),
                    (EventType::Put, KeyKind::Node(node)) => sessions.node_alive(node),
                    (EventType::Delete, KeyKind::Node(node)) => {
                        for session in sessions.node_lapsed(node) {
                            let (released, cancelled) = state.release_session(session);
                            debug!(node, session, released, cancelled, "session of a lapsed node released");
                        }
                    }
                    _ => {}
                }
                next = revision + 1;
                applied.send_replace(revision);
            }
            snapshots.maybe_write(snapshot_every, &state, &sessions, next - 1, &client, &keys);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last batch number applied from each node, to catch a watch that skips or repeats
/// one. A node's first batch seen is taken as it comes (its earlier ones may be in the
/// snapshot this node started from).
#[derive(Debug, Default)]
struct BatchOrder {
    last: HashMap<NodeNumber, u64>,
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Next,
    Repeat,
    Gap { expected: u64 },
}

impl BatchOrder {
    fn see(&mut self, node: NodeNumber, number: u64) -> Seen {
        let Some(last) = self.last.get_mut(&node) else {
            self.last.insert(node, number);
            return Seen::Next;
        };
        match number.cmp(&(*last + 1)) {
            std::cmp::Ordering::Less => Seen::Repeat,
            std::cmp::Ordering::Greater => Seen::Gap { expected: *last + 1 },
            std::cmp::Ordering::Equal => {
                *last = number;
                Seen::Next
            }
        }
    }
}

/// Loads the current snapshot, retrying until etcd answers; returns the revision it
/// covers (0 when there is none yet) and the revision to apply the log from: the one after
/// the snapshot, or without one, the cluster's first (its `config` key's creation: etcd's
/// history before it may be compacted away, but none of it is this cluster's).
async fn load_snapshot(client: &Client, keys: &Keys, state: &State, sessions: &Arc<Sessions>) -> (i64, i64) {
    let mut client = client.clone();
    loop {
        match snapshot::load(&mut client, keys).await {
            Ok(None) => match etcd("reading the cluster's config", client.get(keys.config(), None)).await {
                Ok(config) => return (0, config.kvs().first().map_or(1, |kv| kv.create_revision())),
                Err(e) => warn!(error = %e, "cannot read the cluster's config yet; retrying"),
            },
            Ok(Some(snapshot)) => {
                let revision = snapshot.revision;
                match snapshot.restore(state, sessions) {
                    Ok(()) => {
                        info!(revision, "loaded the cluster snapshot");
                        return (revision, revision + 1);
                    }
                    Err(e) => {
                        error!(error = %e, revision, "the snapshot does not rebuild; this node cannot join");
                        std::process::exit(2);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read the cluster snapshot yet; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn apply_batch(state: &State, sessions: &Arc<Sessions>, revision: i64, value: &[u8]) {
    let entries: Vec<Entry> = match serde_json::from_slice(value) {
        Ok(entries) => entries,
        Err(e) => {
            // Every node skips it alike, so the tables stay the same.
            error!(revision, error = %e, "unreadable batch in the cluster log; skipped");
            return;
        }
    };
    state.raise_token_floor((revision as u64) << TOKEN_SHIFT);
    for entry in entries {
        apply(state, sessions, entry);
    }
}

/// Applies one entry; the same on every node.
pub fn apply(state: &State, sessions: &Arc<Sessions>, entry: Entry) {
    let id = entry.reply_id();
    let Entry { session, epoch, seq, op, .. } = entry;
    match op {
        Op::Open { node, secret_digest } => sessions.open(session, node, secret_digest),
        Op::Attach { node } => sessions.attach(session, node),
        Op::RaiseTokens { above } => state.raise_token_floor(above),
        Op::Close => {
            if sessions.close(session, epoch) {
                state.release_session(session);
            }
        }
        Op::Mutate(mutation) => {
            let from_client = !matches!(mutation, Mutation::TimeOut { .. });
            match sessions.admit(session, epoch, seq) {
                Admit::Apply => {
                    let sink = || Node::sink(sessions, session) as Arc<dyn crate::outbox::ReplySink>;
                    let mut out = Vec::new();
                    mutation.apply(state, session, &id, &sink, true, &mut out);
                    if !out.is_empty() {
                        sessions.deliver(session, id.as_u64(), &out);
                    }
                }
                Admit::Skip => {}
                Admit::Expired if from_client => {
                    let mut out = Vec::new();
                    encode_error(&mut out, &id, &super::session_expired());
                    sessions.send_local(session, &out);
                }
                Admit::Expired => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_order_takes_each_nodes_batches_in_turn_and_tells_repeats_and_gaps() {
        let mut order = BatchOrder::default();
        assert_eq!(order.see(1, 5), Seen::Next, "a node's first batch seen may be any");
        assert_eq!(order.see(2, 0), Seen::Next);
        assert_eq!(order.see(1, 6), Seen::Next);
        assert_eq!(order.see(1, 6), Seen::Repeat);
        assert_eq!(order.see(1, 2), Seen::Repeat);
        assert_eq!(order.see(2, 1), Seen::Next);
        assert_eq!(order.see(1, 8), Seen::Gap { expected: 7 });
    }
}
