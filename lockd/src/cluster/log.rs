//! The cluster's log: what one entry says, and where things live under the prefix.
//!
//! ```text
//! <prefix>/config        the limits every node must share (the first node writes them)
//! <prefix>/node-counter  the last node number handed out
//! <prefix>/nodes/<N>     node N is alive: attached to N's lease, deleted by etcd when it lapses
//! <prefix>/log/<N>/<B>   batch B of node N: a JSON list of entries, or "aborted"
//! <prefix>/snapshot/current    which snapshot is the latest (see `snapshot.rs`)
//! <prefix>/snapshot/<R>/<i>    chunk i of the snapshot of everything up to revision R
//! ```
//!
//! The log is every `log/` put in etcd revision order; a lapsed node's `nodes/` delete
//! has its place in that order too, so every node sees the same history.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mutation::Mutation;
use crate::table::ConnId;

/// A number etcd hands each node when it starts; sessions ids carry it in their top bits.
pub type NodeNumber = u64;

/// What a batch whose fate was unknown (an etcd error while it was being written) is
/// replaced with once the node has made sure it never commits.
pub const ABORTED: &[u8] = b"aborted";

/// One request in the log, from the node that took it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub session: ConnId,
    /// Which connection of the session sent it: bumped by each `resume`, so a node that
    /// lost the session cannot act for it any more.
    pub epoch: u64,
    /// The client's request id (its sequence number in the session); 0 for entries the
    /// node makes itself (opening, closing, time-outs).
    #[serde(default)]
    pub seq: u64,
    /// The client's request id when it is not a sequence number (no resume dedupes such
    /// requests; their replies carry this id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub op: Op,
}

impl Entry {
    /// An entry a node makes itself (no client request behind it).
    pub fn by_node(session: ConnId, epoch: u64, op: Op) -> Self {
        Entry { session, epoch, seq: 0, id: None, op }
    }

    /// The id its reply carries.
    pub fn reply_id(&self) -> Value {
        self.id.clone().unwrap_or(Value::from(self.seq))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A session starts on `node`; `secret_digest` checks a later `resume`.
    Open { node: NodeNumber, secret_digest: String },
    /// `node` takes the session over (`resume`).
    Attach { node: NodeNumber },
    /// The session's connection closed: its locks go at once.
    Close,
    /// Every token from now on is above `above` (`--raise-tokens-above`, after etcd was
    /// restored from a backup that rewound its revisions).
    RaiseTokens { above: u64 },
    Mutate(Mutation),
}

/// The etcd keys of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.trim_end_matches('/').to_owned() }
    }

    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn node_counter(&self) -> String {
        format!("{}/node-counter", self.prefix)
    }

    pub fn node(&self, node: NodeNumber) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    pub fn batch(&self, node: NodeNumber, batch: u64) -> String {
        format!("{}/log/{node}/{batch}", self.prefix)
    }

    pub fn log(&self) -> String {
        format!("{}/log/", self.prefix)
    }

    pub fn snapshot_pointer(&self) -> String {
        format!("{}/snapshot/current", self.prefix)
    }

    pub fn snapshot_chunks(&self, revision: i64) -> String {
        format!("{}/snapshot/{revision}/", self.prefix)
    }

    /// Zero-padded, so that the chunks sort in order.
    pub fn snapshot_chunk(&self, revision: i64, chunk: usize) -> String {
        format!("{}/snapshot/{revision}/{chunk:06}", self.prefix)
    }

    /// What a key under the prefix is.
    pub fn classify(&self, key: &[u8]) -> KeyKind {
        let Some(rest) = key.strip_prefix(self.prefix.as_bytes()).and_then(|r| r.strip_prefix(b"/")) else {
            return KeyKind::Other;
        };
        let text = std::str::from_utf8(rest).unwrap_or("");
        if let Some(n) = text.strip_prefix("nodes/") {
            return n.parse().map_or(KeyKind::Other, KeyKind::Node);
        }
        if let Some((node, number)) = text.strip_prefix("log/").and_then(|b| b.split_once('/')) {
            if let (Ok(node), Ok(number)) = (node.parse(), number.parse()) {
                return KeyKind::Batch { node, number };
            }
        }
        KeyKind::Other
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Node(NodeNumber),
    /// Batch `number` of node `node` (numbered from 0, each written once, in order).
    Batch { node: NodeNumber, number: u64 },
    Other,
}

/// The first session id of node `node`: ids are unique in the cluster because node
/// numbers are.
pub fn first_session_of(node: NodeNumber) -> ConnId {
    node << 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_told_apart() {
        let keys = Keys::new("/pklock/x/");
        assert_eq!(keys.classify(keys.node(7).as_bytes()), KeyKind::Node(7));
        assert_eq!(keys.classify(keys.batch(7, 3).as_bytes()), KeyKind::Batch { node: 7, number: 3 });
        assert_eq!(keys.classify(b"/pklock/x/log/7"), KeyKind::Other);
        assert_eq!(keys.classify(keys.config().as_bytes()), KeyKind::Other);
        assert_eq!(keys.classify(b"/pklock/xy/nodes/1"), KeyKind::Other);
    }

    #[test]
    fn entries_round_trip_as_json() {
        let entry = Entry { session: 5, epoch: 1, seq: 9, id: None, op: Op::Mutate(Mutation::ReleaseAll { owner: Some(2) }) };
        let text = serde_json::to_string(&entry).unwrap();
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), entry);
    }
}
