//! Property test: random operation sequences run through the lock table and through a
//! small, deliberately naive reference model (tests/model/mod.rs, shared with the `table`
//! fuzz target); after every step they must agree.

mod model;

use lockd::table::Owner;
use model::{Op, Wait};
use pklock_proto::Mode;
use proptest::prelude::*;

fn owner_among(conns: u64, handles: u64) -> impl Strategy<Value = Owner> + Clone {
    (0..conns, 0..handles).prop_map(|(conn, handle)| Owner { conn, handle })
}

fn keys() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec((0..3u8).prop_map(|k| format!("k{k}")), 1..3)
}

fn op() -> impl Strategy<Value = Op> {
    op_among(3, 2)
}

/// Crowds: many owners on few keys, so keys get more holders than the table keeps
/// without an index.
fn crowd_op() -> impl Strategy<Value = Op> {
    op_among(6, 4)
}

fn op_among(conns: u64, handles: u64) -> impl Strategy<Value = Op> {
    op_waiting(conns, handles, prop_oneof![Just(Wait::Try), (1..4u64).prop_map(Wait::Secs), Just(Wait::Forever)].boxed())
}

/// What a cluster node's table sees: waits end by a command, never by a deadline.
fn untimed_op() -> impl Strategy<Value = Op> {
    op_waiting(3, 2, prop_oneof![Just(Wait::Try), Just(Wait::Forever)].boxed())
}

fn op_waiting(conns: u64, handles: u64, wait: BoxedStrategy<Wait>) -> impl Strategy<Value = Op> {
    let owner = owner_among(conns, handles);
    let mode = prop_oneof![Just(Mode::Exclusive), Just(Mode::Shared)];
    // Shared requests sometimes carry one of two lock values.
    let value = prop_oneof![3 => Just(None), 1 => Just(Some(1u8)), 1 => Just(Some(2u8))];
    prop_oneof![
        6 => (owner.clone(), keys(), mode, value, wait).prop_map(|(owner, keys, mode, value, wait)| Op::Lock { owner, keys, mode, value, wait }),
        3 => (owner.clone(), keys()).prop_map(|(owner, keys)| Op::Unlock { owner, keys }),
        1 => owner.prop_map(|owner| Op::ReleaseOwner { owner }),
        1 => (0..conns, any::<bool>()).prop_map(|(conn, dead)| Op::ReleaseConnection { conn, dead }),
        1 => (1..3u64).prop_map(|secs| Op::Advance { secs }),
    ]
}

proptest! {
    // 2000 cases by default; PROPTEST_CASES=N runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn table_agrees_with_the_reference_model(ops in prop::collection::vec(op(), 1..40)) {
        model::check_ops(&ops);
    }

    /// Cluster snapshots: a table rebuilt from its image behaves as the original.
    #[test]
    fn a_rebuilt_table_decides_as_the_original(ops in prop::collection::vec(untimed_op(), 1..60), split in 0..60usize) {
        model::check_rebuild(&ops, split);
    }

    #[test]
    fn crowded_keys_agree_with_the_reference_model(ops in prop::collection::vec(crowd_op(), 1..80)) {
        model::check_ops(&ops);
    }
}
