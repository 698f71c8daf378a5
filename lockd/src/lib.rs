//! lockd: the pklock lock server.
//!
//! A lock is held until its owner releases it or its owner's connection dies; no
//! timeout ever takes a lock from a live holder. Layout:
//!
//! - [`table`]: the lock table. Pure and synchronous: modes, FIFO queues, multi-key
//!   grants, fencing tokens, deadlock detection, timeouts, connection death.
//! - [`config`]: every setting, as clap arguments (the `lockd` binary parses them).
//! - [`server`]: listeners, the IP allow-list, client limits, the deadline reaper and
//!   graceful shutdown; owns the [`state::Shared`] state.
//! - [`connection`]: one task per client: reads frames, runs commands, writes replies,
//!   and releases everything the connection held when it ends.
//! - [`outbox`]: a connection's sending side, shared so that whoever ends a wait writes
//!   the grant onto the waiter's socket directly.
//! - [`codec`]: the tokio framing over `pklock_proto::frame`.
//! - [`cmd`]: one file per command, registered in `cmd/mod.rs`.
//! - [`state`]: what connections share: the table, peers, counters, how waiters are
//!   answered.
//!
//! The wire format itself lives in the `pklock-proto` crate, shared with the PHP
//! extension; docs/PROTOCOL.md is its contract.

pub mod cmd;
pub mod codec;
pub mod config;
pub mod connection;
pub mod outbox;
pub mod server;
pub mod state;
pub mod table;

pub use config::Config;
pub use server::Server;
