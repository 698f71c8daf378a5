//! Snapshots, so the log does not grow forever. Every `--snapshot-every` revisions, the
//! live node with the lowest number (all nodes agree on it: it follows from the log)
//! images the table and the sessions as of the revision it just applied, writes the
//! image in chunks under `<prefix>/snapshot/<R>/`, points `<prefix>/snapshot/current` at it,
//! then deletes the log batches it covers and the previous snapshot, and compacts etcd's
//! history up to the previous snapshot (one snapshot of slack for slower nodes).
//!
//! A node that starts, or whose watch fell behind a compaction, loads the current
//! snapshot and applies the log from the revision after it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use etcd_client::{Client, DeleteOptions, GetOptions, TxnOp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

use super::sessions::{Sessions, SessionsImage};
use super::{etcd, ClusterError, Node};
use crate::reply::ReplyStyle;
use crate::state::{State, Waiter};
use crate::table::{RawImage, TableImage};

/// Bytes per chunk, below etcd's default request limit of 1.5 MiB.
const CHUNK: usize = 1 << 20;
/// Deletes per transaction (etcd's default --max-txn-ops is 128).
const DELETES_PER_TXN: usize = 100;

/// What a snapshot keeps of a waiter: how to answer it and when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaiterImage {
    id: Value,
    style: ReplyStyle,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ends_at_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last revision it includes.
    pub revision: i64,
    table: TableImage<WaiterImage>,
    sessions: SessionsImage,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pointer {
    revision: i64,
    chunks: usize,
}

/// A snapshot as copied between two revisions, not yet put in order (see
/// [`RawImage`]): the copy is all that holds up the table and the applier.
pub struct Copied {
    revision: i64,
    table: RawImage<WaiterImage>,
    sessions: SessionsImage,
}

impl Copied {
    /// The snapshot, in the order a rebuild needs (long at a large table: not on the runtime).
    pub fn finish(self) -> Snapshot {
        Snapshot { revision: self.revision, table: self.table.finish(), sessions: self.sessions }
    }
}

impl Snapshot {
    /// Copies the replicated state as of `revision` (called by the applier between two revisions).
    pub fn copy(state: &State, sessions: &Sessions, revision: i64) -> Option<Copied> {
        let image = |w: &Waiter| WaiterImage { id: w.id.clone(), style: w.style, ends_at_ms: w.ends_at_ms };
        match state.raw_image(image) {
            Ok(table) => Some(Copied { revision, table, sessions: sessions.image() }),
            Err(e) => {
                warn!(error = %e, "cannot snapshot the table");
                None
            }
        }
    }

    /// Makes `state` and `sessions` what this snapshot says.
    pub fn restore(self, state: &State, sessions: &Arc<Sessions>) -> Result<(), crate::table::RebuildError> {
        sessions.restore(self.sessions);
        state.restore(self.table, |session, w| Waiter {
            sink: Node::sink(sessions, session),
            id: w.id,
            style: w.style,
            answered: None,
            ends_at_ms: w.ends_at_ms,
        })
    }
}

/// Reads the current snapshot, if there is one.
pub async fn load(client: &mut Client, keys: &super::log::Keys) -> Result<Option<Snapshot>, ClusterError> {
    let current = etcd("reading the snapshot pointer", client.get(keys.snapshot_pointer(), None)).await?;
    let Some(kv) = current.kvs().first() else { return Ok(None) };
    let pointer: Pointer = serde_json::from_slice(kv.value()).map_err(ClusterError::BadSnapshot)?;
    // One chunk per read: all of them in one answer would pass the client's 4 MiB message
    // limit once the table is larger than that, and the node could never start.
    let mut bytes = Vec::new();
    for i in 0..pointer.chunks {
        let chunk = etcd("reading the snapshot", client.get(keys.snapshot_chunk(pointer.revision, i), None)).await?;
        let Some(kv) = chunk.kvs().first() else {
            return Err(ClusterError::SnapshotIncomplete { revision: pointer.revision, found: i, expected: pointer.chunks });
        };
        bytes.extend_from_slice(kv.value());
    }
    serde_json::from_slice(&bytes).map(Some).map_err(ClusterError::BadSnapshot)
}

/// Writes snapshots in the background, one at a time.
#[derive(Debug, Default)]
pub struct Writer {
    busy: Arc<AtomicBool>,
    /// The revision of the last snapshot this node wrote or loaded.
    last: i64,
}

impl Writer {
    pub fn new(loaded: i64) -> Self {
        Writer { busy: Arc::default(), last: loaded }
    }

    /// Called after each applied revision: starts a snapshot when one is due.
    pub fn maybe_write(&mut self, every: i64, state: &State, sessions: &Sessions, revision: i64, client: &Client, keys: &super::log::Keys) {
        if revision - self.last < every || !sessions.writes_snapshots() || self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(copied) = Snapshot::copy(state, sessions, revision) else {
            self.busy.store(false, Ordering::Release);
            return;
        };
        let previous = std::mem::replace(&mut self.last, revision);
        let (busy, mut client, keys) = (self.busy.clone(), client.clone(), keys.clone());
        tokio::spawn(async move {
            match write(&mut client, &keys, copied, previous).await {
                Ok(deleted) => info!(revision, deleted, "snapshot written; the log before it deleted"),
                Err(e) => warn!(error = %e, revision, "writing a snapshot failed; the next one will retry"),
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// Writes the snapshot `copied`, then drops what it makes unnecessary; returns how many
/// log batches were deleted.
async fn write(client: &mut Client, keys: &super::log::Keys, copied: Copied, previous: i64) -> Result<usize, ClusterError> {
    let revision = copied.revision;
    // Ordering and encoding a million locks takes a tenth of a second: off the runtime.
    let encode = tokio::task::spawn_blocking(move || serde_json::to_vec(&copied.finish()));
    let bytes = encode.await.map_err(ClusterError::SnapshotTask)?.map_err(ClusterError::BadSnapshot)?;
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        etcd("writing a snapshot chunk", client.put(keys.snapshot_chunk(revision, i), chunk.to_vec(), None)).await?;
    }
    let pointer = serde_json::to_vec(&Pointer { revision: revision, chunks: chunks.len() }).map_err(ClusterError::BadSnapshot)?;
    etcd("pointing at the snapshot", client.put(keys.snapshot_pointer(), pointer, None)).await?;

    // The batches the snapshot covers are not needed by anyone now.
    let options = GetOptions::new().with_prefix().with_keys_only();
    let batches = etcd("listing the log", client.get(keys.log(), Some(options))).await?;
    let covered: Vec<Vec<u8>> = batches.kvs().iter().filter(|kv| kv.mod_revision() <= revision).map(|kv| kv.key().to_vec()).collect();
    for group in covered.chunks(DELETES_PER_TXN) {
        let deletes: Vec<TxnOp> = group.iter().map(|key| TxnOp::delete(key.clone(), None)).collect();
        etcd("deleting covered log batches", client.txn(etcd_client::Txn::new().and_then(deletes))).await?;
    }
    if previous > 0 {
        etcd("deleting the previous snapshot", client.delete(keys.snapshot_chunks(previous), Some(DeleteOptions::new().with_prefix()))).await?;
        // History before the previous snapshot: a node that still needs it loads a snapshot.
        etcd("compacting etcd's history", client.compact(previous, None)).await?;
    }
    Ok(covered.len())
}
