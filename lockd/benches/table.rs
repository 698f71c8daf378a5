//! Criterion benches of the lock table alone (no sockets, no JSON): the cost of each
//! table operation, measured on a table that already holds 1k locks and on one that
//! holds 1M, so that a cost growing with table size shows up side by side.
//!
//! Run: `cargo bench -p lockd --bench table` (full), or with `-- --test` to run every
//! bench once (the CI smoke mode). `-- uncontended` runs one group. Numbers go to
//! BENCHMARKS.md.
//!
//! Every operation leaves the table as it found it, so one table per size serves all the
//! benches. The keys an operation touches rotate through a pool of keys that are not held,
//! so on the 1M table each operation pays for the cache misses a real request would.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lockd::table::{Acquired, LockRequest, LockTable, Owner, TableError, Wakeup};
use pklock_proto::Mode;

/// A waiter is just a number here; the server stores a reply channel.
type Table = LockTable<u32>;

/// Locks already held when an operation is measured: (label, count).
const SIZES: [(&str, usize); 2] = [("1k", 1_000), ("1M", 1_000_000)];
/// The background locks are spread over this many connections, one owner each.
const BACKGROUND_CONNS: u64 = 1_000;
/// Distinct keys each operation rotates through.
const POOL: usize = 4_096;
/// Connection ids the benches' own owners use, above every background connection.
const BENCH_CONN: u64 = 1 << 32;

fn owner(conn: u64) -> Owner {
    Owner { conn: BENCH_CONN + conn, handle: 0 }
}

/// A table holding `n` exclusive locks on keys shaped like real ones.
fn table_holding(n: usize) -> Table {
    let mut table = Table::new(lockd::table::Limits::default());
    let now = Instant::now();
    let mut woken = Vec::new();
    for i in 0..n {
        let keys = [format!("invoice:{i}:pdf")];
        let who = Owner { conn: i as u64 % BACKGROUND_CONNS, handle: 0 };
        let req = LockRequest { owner: who, keys: &keys, mode: Mode::Exclusive, wait: None, value: None };
        let granted = table.lock(req, now, || 0, &mut woken).expect("background lock");
        assert!(matches!(granted, Acquired::Granted { .. }));
    }
    table
}

fn lock(table: &mut Table, who: Owner, keys: &[String], mode: Mode, woken: &mut Vec<Wakeup<u32>>) -> Result<Acquired, TableError> {
    table.lock(LockRequest { owner: who, keys, mode, wait: None, value: None }, Instant::now(), || 0, woken)
}

fn unlock(table: &mut Table, who: Owner, keys: &[String], woken: &mut Vec<Wakeup<u32>>) {
    black_box(table.unlock(who, keys, Instant::now(), woken));
}

/// `POOL` requests of `width` fresh keys each.
fn key_pool(prefix: &str, width: usize) -> Vec<Vec<String>> {
    (0..POOL).map(|i| (0..width).map(|j| format!("{prefix}:{i}:{j}")).collect()).collect()
}

fn bench_table(c: &mut Criterion) {
    let mut tables: Vec<(&str, Table)> = SIZES.iter().map(|&(label, n)| (label, table_holding(n))).collect();
    let mut woken = Vec::new();

    // One owner takes a free key and releases it: the common case of a PHP request.
    let mut group = c.benchmark_group("uncontended");
    group.throughput(Throughput::Elements(1));
    let pool = key_pool("order", 1);
    for (label, table) in tables.iter_mut().map(|(l, t)| (*l, t)) {
        let mut next = pool.iter().cycle();
        group.bench_function(BenchmarkId::new("lock+unlock", label), |b| {
            b.iter(|| {
                let keys = next.next().expect("cycle");
                black_box(lock(table, owner(0), keys, Mode::Exclusive, &mut woken).expect("lock"));
                unlock(table, owner(0), keys, &mut woken);
            })
        });
    }
    group.finish();

    // One key, a queue of waiters: the holder unlocks (the next waiter is granted) and
    // queues again at the back. One iteration is one handoff.
    let mut group = c.benchmark_group("handoff");
    group.throughput(Throughput::Elements(1));
    for waiters in [1, 256] {
        for (label, table) in tables.iter_mut().map(|(l, t)| (*l, t)) {
            let hot = vec!["hot".to_string()];
            for i in 0..=waiters {
                lock(table, owner(i), &hot, Mode::Exclusive, &mut woken).expect("queue");
            }
            let mut holder = 0;
            group.bench_function(BenchmarkId::new(format!("{waiters} waiting"), label), |b| {
                b.iter(|| {
                    woken.clear();
                    unlock(table, owner(holder), &hot, &mut woken);
                    debug_assert_eq!(woken.len(), 1);
                    black_box(lock(table, owner(holder), &hot, Mode::Exclusive, &mut woken).expect("requeue"));
                    holder = (holder + 1) % (waiters + 1);
                })
            });
            for i in 0..=waiters {
                table.release_owner(owner(i), Instant::now(), &mut woken);
            }
            woken.clear();
        }
    }
    group.finish();

    // One request for 16 keys, then one unlock of all 16.
    let mut group = c.benchmark_group("multi_key");
    group.throughput(Throughput::Elements(1));
    let pool = key_pool("cart", 16);
    for (label, table) in tables.iter_mut().map(|(l, t)| (*l, t)) {
        let mut next = pool.iter().cycle();
        group.bench_function(BenchmarkId::new("16 keys lock+unlock", label), |b| {
            b.iter(|| {
                let keys = next.next().expect("cycle");
                black_box(lock(table, owner(0), keys, Mode::Exclusive, &mut woken).expect("lock"));
                unlock(table, owner(0), keys, &mut woken);
            })
        });
    }
    group.finish();

    // A key already held shared by many owners; one more joins and leaves.
    let mut group = c.benchmark_group("shared");
    group.throughput(Throughput::Elements(1));
    for holders in [16, 1024] {
        for (label, table) in tables.iter_mut().map(|(l, t)| (*l, t)) {
            let key = vec!["config".to_string()];
            for i in 1..=holders {
                lock(table, owner(i), &key, Mode::Shared, &mut woken).expect("shared");
            }
            group.bench_function(BenchmarkId::new(format!("{holders} holders lock+unlock"), label), |b| {
                b.iter(|| {
                    black_box(lock(table, owner(0), &key, Mode::Shared, &mut woken).expect("lock"));
                    unlock(table, owner(0), &key, &mut woken);
                })
            });
            for i in 1..=holders {
                table.release_owner(owner(i), Instant::now(), &mut woken);
            }
        }
    }
    group.finish();

    // A wait chain: owner i holds chain:i and waits for chain:i+1; the last one only
    // holds. A request by the last owner for chain:0 closes a cycle through all of them
    // and is refused; a request by an outsider for chain:0 walks the chain, finds no
    // cycle, queues, and is withdrawn.
    let mut group = c.benchmark_group("deadlock_check");
    group.throughput(Throughput::Elements(1));
    for len in [16, 1024] {
        for (label, table) in tables.iter_mut().map(|(l, t)| (*l, t)) {
            let link = |i: u64| vec![format!("chain:{i}")];
            for i in 0..=len {
                lock(table, owner(i), &link(i), Mode::Exclusive, &mut woken).expect("hold");
            }
            for i in 0..len {
                let queued = lock(table, owner(i), &link(i + 1), Mode::Exclusive, &mut woken).expect("wait");
                assert_eq!(queued, Acquired::Queued);
            }
            let first = link(0);
            group.bench_function(BenchmarkId::new(format!("chain of {len}, cycle refused"), label), |b| {
                b.iter(|| {
                    let refused = lock(table, owner(len), &first, Mode::Exclusive, &mut woken);
                    assert!(matches!(refused, Err(TableError::Deadlock(_))));
                })
            });
            let outsider = owner(len + 1);
            group.bench_function(BenchmarkId::new(format!("chain of {len}, no cycle, queued"), label), |b| {
                b.iter(|| {
                    let queued = lock(table, outsider, &first, Mode::Exclusive, &mut woken).expect("queue");
                    assert_eq!(queued, Acquired::Queued);
                    unlock(table, outsider, &first, &mut woken);
                    woken.clear();
                })
            });
            for i in 0..=len + 1 {
                table.release_owner(owner(i), Instant::now(), &mut woken);
            }
            woken.clear();
        }
    }
    group.finish();

    for (label, table) in &tables {
        let size = SIZES.iter().find(|(l, _)| l == label).expect("size").1;
        assert_eq!(table.stats().locks, size, "a bench left locks behind on the {label} table");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_table
}
criterion_main!(benches);
