//! Target `table`: the lock table against its reference model (lockd/tests/model), as in
//! the property test, but with sequences the fuzzer grows towards new code paths.
//!
//! Input: three bytes per operation, at most [`MAX_OPS`] operations. Byte 0 picks the
//! operation and, for a lock, its mode and wait; byte 1 the owner (3 connections x 2
//! handles), or the connection and whether it died, or the seconds to advance; byte 2 one
//! to three keys out of four (repeats allowed: the table must treat `[a, a]` as `[a]`).

use lockd::table::Owner;
use pklock_proto::Mode;

use super::model::{check_ops, Op, Wait};

/// Long enough for deep queues and cycles; short enough that the model (which
/// recomputes everything each step) stays fast.
const MAX_OPS: usize = 64;

pub fn run(data: &[u8]) {
    let ops: Vec<Op> = data.chunks(3).take(MAX_OPS).map(op).collect();
    check_ops(&ops);
}

fn op(bytes: &[u8]) -> Op {
    let byte = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let (what, who, keys) = (byte(0), byte(1), byte(2));
    let owner = Owner { conn: u64::from(who % 3), handle: u64::from(who / 3 % 2) };
    match what % 12 {
        0..=5 => {
            let mode = if what / 12 % 2 == 0 { Mode::Exclusive } else { Mode::Shared };
            let wait = match what / 24 % 5 {
                0 => Wait::Try,
                1..=3 => Wait::Secs(u64::from(what / 24 % 5)),
                _ => Wait::Forever,
            };
            // Shared requests of owners 4 and 5 carry a lock value, of two.
            let value = (mode == Mode::Shared && who % 6 >= 4).then_some(who / 6 % 2);
            Op::Lock { owner, keys: key_list(keys), mode, value, wait }
        }
        6..=8 => Op::Unlock { owner, keys: key_list(keys) },
        9 => Op::ReleaseOwner { owner },
        10 => Op::ReleaseConnection { conn: u64::from(who % 3), dead: who / 3 % 2 == 0 },
        _ => Op::Advance { secs: u64::from(1 + who % 2) },
    }
}

/// One to three of the keys k0..k3: the count from `b % 3`, each key a base-4 digit of
/// `b / 3`.
fn key_list(b: u8) -> Vec<String> {
    let count = usize::from(b % 3) + 1;
    let mut digits = b / 3;
    (0..count)
        .map(|_| {
            let key = format!("k{}", digits % 4);
            digits /= 4;
            key
        })
        .collect()
}
