//! lockd: the pklock lock server.
//!
//! A lock is held until its owner releases it or its owner's connection dies; no
//! timeout ever takes a lock from a live holder. Layout:
//!
//! - [`table`]: the lock table. Pure and synchronous: modes, FIFO queues, multi-key
//!   grants, fencing tokens, deadlock detection, timeouts, connection death.
//! - [`config`]: every setting, as clap arguments (the `lockd` binary parses them).
//! - [`server`]: listeners, the IP allow-list, client limits, the open-file limit, the
//!   deadline reaper and graceful shutdown; owns the [`state::State`] state.
//! - [`connection`]: one task per client: reads frames, runs commands, writes replies,
//!   and releases everything the connection held when it ends.
//! - [`outbox`]: a connection's sending side, shared so that whoever ends a wait writes
//!   the grant onto the waiter's socket directly.
//! - [`tls`]: `--tls-cert`/`--tls-key`: the handshake, and the bridge that lets a TLS client
//!   be served by the same connection task; [`stream`]: the two kinds of client stream.
//! - [`codec`]: reads `pklock_proto::frame` frames off a socket with bounded memory.
//! - [`liveness`]: finds peers that stopped acknowledging, without ending slow readers.
//! - [`cmd`]: one file per command, registered in `cmd/mod.rs`.
//! - [`compat`]: front ends for other lock servers' protocols (MediaWiki's
//!   LockServerDaemon), through the same door as the native commands.
//! - [`mutation`]: the requests that change the table, as data, applied the same way by a
//!   single lockd and by every node of a cluster.
//! - [`state`]: the one door to the table: every front end changes it through these
//!   methods, which answer the waiters an operation woke after the mutex is dropped.
//! - [`reply`]: reply encoding, including how each kind of client hears a lock's outcome.
//! - [`cluster`]: `--cluster`: nodes that apply one log of requests kept in etcd, so a
//!   lock survives the loss of a node (docs/CLUSTER.md).
//! - [`telemetry`]: `--metrics-listen`: Prometheus metrics over HTTP.
//! - [`tokens`]: where fencing tokens start, so they never go backwards across restarts.
//!
//! The wire format itself lives in the `pklock-proto` crate, shared with the PHP
//! extension; docs/PROTOCOL.md is its contract.

pub mod cluster;
pub mod cmd;
pub mod compat;
pub mod codec;
pub mod config;
pub mod config_file;
pub mod connection;
pub mod liveness;
pub mod mutation;
pub mod outbox;
pub mod reply;
pub mod server;
pub mod state;
pub mod stream;
pub mod table;
pub mod telemetry;
pub mod tls;
pub mod tokens;

pub use config::Config;
pub use server::Server;
