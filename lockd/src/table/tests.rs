//! Unit tests of the lock table: one behaviour each, driven with explicit times.

use super::*;

type Table = LockTable<&'static str>;

fn owner(conn: ConnId, handle: u64) -> Owner {
    Owner { conn, handle }
}

fn keys(ks: &[&str]) -> Vec<String> {
    ks.iter().map(|k| k.to_string()).collect()
}

struct Fixture {
    table: Table,
    now: Instant,
    woken: Vec<Wakeup<&'static str>>,
}

impl Fixture {
    fn new() -> Self {
        Self::with(Limits::default())
    }

    fn with(limits: Limits) -> Self {
        Fixture { table: LockTable::new(limits), now: Instant::now(), woken: Vec::new() }
    }

    fn lock(&mut self, o: Owner, ks: &[&str], mode: Mode, wait: Option<u64>, name: &'static str) -> Result<Acquired, TableError> {
        let ks = keys(ks);
        let req = LockRequest { owner: o, keys: &ks, mode, wait: wait.map(Duration::from_secs), value: None };
        self.table.lock(req, self.now, || name, &mut self.woken)
    }

    fn x(&mut self, o: Owner, ks: &[&str], name: &'static str) -> Acquired {
        self.lock(o, ks, Mode::Exclusive, None, name).unwrap()
    }

    fn s(&mut self, o: Owner, ks: &[&str], name: &'static str) -> Acquired {
        self.lock(o, ks, Mode::Shared, None, name).unwrap()
    }

    fn unlock(&mut self, o: Owner, ks: &[&str]) -> Unlocked {
        self.table.unlock(o, &keys(ks), self.now, &mut self.woken)
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.table.expire(self.now, &mut self.woken);
    }

    /// The waiters woken since the last call, as (name, how).
    fn woken(&mut self) -> Vec<(&'static str, WaitEnd)> {
        self.woken.drain(..).map(|w| (w.waiter, w.end)).collect()
    }

    fn woken_names(&mut self) -> Vec<&'static str> {
        self.woken().into_iter().map(|(n, _)| n).collect()
    }
}

fn granted(a: Acquired) -> u64 {
    match a {
        Acquired::Granted { token } => token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[test]
fn free_key_is_granted_and_released() {
    let mut f = Fixture::new();
    let t = granted(f.x(owner(1, 0), &["a"], "a1"));
    assert!(f.table.check("a", t));
    assert_eq!(f.table.stats().locks, 1);
    let u = f.unlock(owner(1, 0), &["a", "b"]);
    assert_eq!(u.released, ["a"]);
    assert_eq!(u.not_held, ["b"]);
    assert!(!f.table.check("a", t));
    assert_eq!(f.table.stats(), TableStats { grants: 1, last_token: t, ..TableStats::default() });
}

#[test]
fn try_lock_on_a_held_key_is_busy_and_leaves_no_trace() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["a"], "a1");
    assert_eq!(f.lock(owner(2, 0), &["a"], Mode::Exclusive, Some(0), "b").unwrap(), Acquired::Busy);
    assert_eq!(f.table.stats().waiters, 0);
}

#[test]
fn two_owners_on_one_connection_conflict() {
    let mut f = Fixture::new();
    f.x(owner(1, 1), &["a"], "first");
    assert_eq!(f.lock(owner(1, 2), &["a"], Mode::Exclusive, Some(0), "second").unwrap(), Acquired::Busy);
}

#[test]
fn waiters_are_granted_in_arrival_order() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["a"], "holder");
    for (conn, name) in [(2, "w2"), (3, "w3"), (4, "w4")] {
        assert_eq!(f.x(owner(conn, 0), &["a"], name), Acquired::Queued);
    }
    f.unlock(owner(1, 0), &["a"]);
    assert_eq!(f.woken_names(), ["w2"]);
    f.unlock(owner(2, 0), &["a"]);
    assert_eq!(f.woken_names(), ["w3"]);
    f.unlock(owner(3, 0), &["a"]);
    assert_eq!(f.woken_names(), ["w4"]);
}

#[test]
fn shared_holders_coexist_and_exclusive_waits_for_all_of_them() {
    let mut f = Fixture::new();
    granted(f.s(owner(1, 0), &["a"], "r1"));
    granted(f.s(owner(2, 0), &["a"], "r2"));
    assert_eq!(f.x(owner(3, 0), &["a"], "w"), Acquired::Queued);
    f.unlock(owner(1, 0), &["a"]);
    assert!(f.woken().is_empty());
    f.unlock(owner(2, 0), &["a"]);
    assert_eq!(f.woken_names(), ["w"]);
}

#[test]
fn shared_request_behind_a_queued_writer_waits_so_writers_do_not_starve() {
    let mut f = Fixture::new();
    f.s(owner(1, 0), &["a"], "r1");
    assert_eq!(f.x(owner(2, 0), &["a"], "w"), Acquired::Queued);
    assert_eq!(f.s(owner(3, 0), &["a"], "r3"), Acquired::Queued);
    f.unlock(owner(1, 0), &["a"]);
    assert_eq!(f.woken_names(), ["w"]);
    f.unlock(owner(2, 0), &["a"]);
    assert_eq!(f.woken_names(), ["r3"]);
}

#[test]
fn consecutive_shared_waiters_are_granted_together() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["a"], "w");
    f.s(owner(2, 0), &["a"], "r2");
    f.s(owner(3, 0), &["a"], "r3");
    f.x(owner(4, 0), &["a"], "w4");
    f.unlock(owner(1, 0), &["a"]);
    assert_eq!(f.woken_names(), ["r2", "r3"]);
}

#[test]
fn multi_key_request_is_all_or_nothing() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["b"], "holder");
    assert_eq!(f.lock(owner(2, 0), &["a", "b"], Mode::Exclusive, Some(0), "try").unwrap(), Acquired::Busy);
    assert_eq!(f.table.token_of(owner(2, 0), "a"), None, "no partial grant");
    assert_eq!(f.x(owner(2, 0), &["a", "b"], "both"), Acquired::Queued);
    // The waiting request keeps its place on the free key too: nobody barges onto it.
    assert_eq!(f.lock(owner(3, 0), &["a"], Mode::Exclusive, Some(0), "barger").unwrap(), Acquired::Busy);
    f.unlock(owner(1, 0), &["b"]);
    let woken = f.woken();
    assert_eq!(woken.len(), 1);
    let WaitEnd::Granted { token } = woken[0].1 else { panic!("{woken:?}") };
    assert_eq!(f.table.token_of(owner(2, 0), "a"), Some(token));
    assert_eq!(f.table.token_of(owner(2, 0), "b"), Some(token));
}

#[test]
fn every_grant_gets_a_larger_token_even_a_relock() {
    let mut f = Fixture::new();
    let t1 = granted(f.x(owner(1, 0), &["a"], "a"));
    let t2 = granted(f.x(owner(1, 0), &["b"], "b"));
    let t3 = granted(f.x(owner(1, 0), &["a"], "again"));
    assert!(t1 < t2 && t2 < t3);
    assert!(!f.table.check("a", t1), "the old token no longer passes");
    assert!(f.table.check("a", t3));
    assert_eq!(f.table.stats().locks, 2, "a relock does not add a lock");
}

#[test]
fn sole_reader_upgrades_at_once_and_other_readers_make_it_wait() {
    let mut f = Fixture::new();
    f.s(owner(1, 0), &["a"], "r1");
    granted(f.x(owner(1, 0), &["a"], "up"));
    f.lock(owner(2, 0), &["a"], Mode::Shared, Some(0), "r2").map(|a| assert_eq!(a, Acquired::Busy)).unwrap();

    let mut f = Fixture::new();
    f.s(owner(1, 0), &["a"], "r1");
    f.s(owner(2, 0), &["a"], "r2");
    f.x(owner(3, 0), &["a"], "writer");
    // The upgrade queues ahead of the writer that was already waiting.
    assert_eq!(f.x(owner(1, 0), &["a"], "upgrade"), Acquired::Queued);
    f.unlock(owner(2, 0), &["a"]);
    assert_eq!(f.woken_names(), ["upgrade"]);
}

#[test]
fn downgrade_is_immediate_and_lets_shared_waiters_in() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["a"], "w");
    f.s(owner(2, 0), &["a"], "r2");
    granted(f.s(owner(1, 0), &["a"], "down"));
    assert_eq!(f.woken_names(), ["r2"]);
}

#[test]
fn crossed_waits_are_refused_as_deadlock_naming_the_cycle() {
    let mut f = Fixture::new();
    f.x(owner(1, 7), &["a"], "a");
    f.x(owner(2, 8), &["b"], "b");
    assert_eq!(f.x(owner(1, 7), &["b"], "1 wants b"), Acquired::Queued);
    let err = f.lock(owner(2, 8), &["a"], Mode::Exclusive, None, "2 wants a").unwrap_err();
    let TableError::Deadlock(cycle) = err else { panic!("{err:?}") };
    assert_eq!(
        cycle,
        [
            CycleStep { connection: 2, owner: 8, key: "a".into() },
            CycleStep { connection: 1, owner: 7, key: "b".into() },
        ]
    );
    assert_eq!(f.table.stats().deadlocks, 1);
    assert_eq!(f.table.stats().waiters, 1, "the refused request left no waiter behind");
}

#[test]
fn two_readers_upgrading_is_a_deadlock_for_the_second() {
    let mut f = Fixture::new();
    f.s(owner(1, 0), &["a"], "r1");
    f.s(owner(2, 0), &["a"], "r2");
    assert_eq!(f.x(owner(1, 0), &["a"], "up1"), Acquired::Queued);
    assert!(matches!(f.lock(owner(2, 0), &["a"], Mode::Exclusive, None, "up2"), Err(TableError::Deadlock(_))));
}

#[test]
fn deadlock_through_a_queue_is_found() {
    // 1 reads a, 2 queues to write a, 3 holds b and queues to read a behind 2 (so 3
    // waits for 2, not for 1); 1 asking for b closes 1 -> 3 -> 2 -> 1.
    let mut f = Fixture::new();
    f.s(owner(1, 0), &["a"], "a");
    f.x(owner(3, 0), &["b"], "b");
    f.x(owner(2, 0), &["a"], "2 wants a");
    f.s(owner(3, 0), &["a"], "3 wants a");
    let err = f.lock(owner(1, 0), &["b"], Mode::Exclusive, None, "1 wants b").unwrap_err();
    assert!(matches!(err, TableError::Deadlock(ref c) if c.len() == 3), "{err:?}");
}

#[test]
fn compatible_wait_is_not_a_false_deadlock() {
    // 1 holds j; 2 waits for shared k and j; 1 asks for shared k behind 2: 1 does not
    // wait for 2 (both shared), so there is no cycle.
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["j"], "j");
    f.x(owner(3, 0), &["k"], "k");
    assert_eq!(f.s(owner(2, 0), &["k", "j"], "2"), Acquired::Queued);
    assert_eq!(f.s(owner(1, 0), &["k"], "1"), Acquired::Queued);
}

#[test]
fn a_wait_that_runs_out_leaves_the_queue_at_once() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["a"], "holder");
    assert_eq!(f.lock(owner(2, 0), &["a"], Mode::Exclusive, Some(5), "short").unwrap(), Acquired::Queued);
    f.x(owner(3, 0), &["a"], "patient");
    assert_eq!(f.table.next_deadline(), Some(f.now + Duration::from_secs(5)));
    f.advance(4);
    assert!(f.woken().is_empty());
    f.advance(1);
    assert_eq!(f.woken(), [("short", WaitEnd::TimedOut)]);
    assert_eq!(f.table.stats().timeouts, 1);
    f.unlock(owner(1, 0), &["a"]);
    assert_eq!(f.woken_names(), ["patient"]);
}

#[test]
fn unlock_of_an_awaited_key_cancels_the_wait() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["a"], "holder");
    f.x(owner(2, 0), &["a"], "waiter");
    let u = f.unlock(owner(2, 0), &["a"]);
    assert!(u.cancelled);
    assert_eq!(f.woken(), [("waiter", WaitEnd::Cancelled)]);
}

#[test]
fn connection_death_releases_everything_and_grants_the_next_waiter() {
    let mut f = Fixture::new();
    f.x(owner(1, 1), &["a"], "a");
    f.s(owner(1, 2), &["b"], "b");
    f.x(owner(2, 0), &["a"], "next");
    f.x(owner(1, 3), &["a"], "dead waiter");
    let (released, cancelled) = f.table.release_connection(1, true, f.now, &mut f.woken);
    assert_eq!((released, cancelled), (2, 1));
    assert_eq!(f.woken_names(), ["next"], "the dead connection's own waiter is dropped, not granted");
    assert_eq!(f.table.stats().locks, 1);
}

#[test]
fn lock_delay_keeps_a_dead_holders_lock_until_it_runs_out() {
    let mut f = Fixture::with(Limits { lock_delay: Duration::from_secs(3), ..Limits::default() });
    let t = granted(f.x(owner(1, 0), &["a"], "a"));
    f.x(owner(2, 0), &["a"], "next");
    f.table.release_connection(1, true, f.now, &mut f.woken);
    assert!(f.woken().is_empty());
    assert!(!f.table.check("a", t), "a lingering lock is no longer valid");
    f.advance(3);
    assert_eq!(f.woken_names(), ["next"]);
    // An explicit unlock never lingers.
    f.unlock(owner(2, 0), &["a"]);
    assert_eq!(f.table.stats().locks, 0);
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let mut f = Fixture::with(Limits { max_locks: 2, max_waiters: 1, max_keys: 3, max_key_len: 4, ..Limits::default() });
    assert!(matches!(f.lock(owner(1, 0), &["a", "b", "c", "d"], Mode::Exclusive, None, "x"), Err(TableError::TooManyKeys { count: 4, limit: 3 })));
    assert!(matches!(f.lock(owner(1, 0), &["toolong"], Mode::Exclusive, None, "x"), Err(TableError::BadKey(_))));
    assert!(matches!(f.lock(owner(1, 0), &[""], Mode::Exclusive, None, "x"), Err(TableError::BadKey(_))));
    assert!(matches!(f.lock(owner(1, 0), &[], Mode::Exclusive, None, "x"), Err(TableError::BadKey(_))));
    f.x(owner(1, 0), &["a"], "a");
    assert!(matches!(f.lock(owner(1, 0), &["b", "c"], Mode::Exclusive, None, "x"), Err(TableError::TooManyLocks { limit: 2 })));
    assert_eq!(f.x(owner(2, 0), &["a"], "w1"), Acquired::Queued);
    assert!(matches!(f.lock(owner(2, 0), &["c"], Mode::Exclusive, None, "x"), Err(TableError::OwnerBusy { handle: 0 })));
    assert!(matches!(f.lock(owner(3, 0), &["a"], Mode::Shared, None, "x"), Err(TableError::TooManyLocks { limit: 2 })), "queued requests count against the lock limit");

    let mut f = Fixture::with(Limits { max_waiters: 1, ..Limits::default() });
    f.x(owner(1, 0), &["a"], "a");
    assert_eq!(f.x(owner(2, 0), &["a"], "w1"), Acquired::Queued);
    assert!(matches!(f.lock(owner(3, 0), &["a"], Mode::Shared, None, "x"), Err(TableError::TooManyWaiters { limit: 1 })));
    assert_eq!(f.lock(owner(3, 0), &["a"], Mode::Shared, Some(0), "try").unwrap(), Acquired::Busy, "a try-lock never counts as a waiter");
}

#[test]
fn one_connection_waits_for_at_most_its_share_and_every_ended_wait_frees_a_place() {
    let mut f = Fixture::with(Limits { max_waiters_per_connection: 2, ..Limits::default() });
    f.x(owner(9, 0), &["a", "b", "c"], "holder");
    assert_eq!(f.x(owner(1, 1), &["a"], "granted later"), Acquired::Queued);
    assert_eq!(f.lock(owner(1, 2), &["b"], Mode::Exclusive, Some(5), "times out").unwrap(), Acquired::Queued);
    let full = f.lock(owner(1, 3), &["c"], Mode::Exclusive, None, "refused");
    assert!(matches!(full, Err(TableError::TooManyWaitersOnConnection { limit: 2 })), "{full:?}");
    assert_eq!(f.x(owner(2, 3), &["c"], "another connection"), Acquired::Queued, "the limit is per connection");

    // A grant, a timeout and a withdrawn owner each free a place.
    f.unlock(owner(9, 0), &["a"]);
    assert_eq!(f.x(owner(1, 3), &["c"], "third"), Acquired::Queued);
    f.advance(6);
    assert_eq!(f.x(owner(1, 4), &["c"], "fourth"), Acquired::Queued);
    f.table.release_owner(owner(1, 3), f.now, &mut f.woken);
    assert_eq!(f.x(owner(1, 5), &["c"], "fifth"), Acquired::Queued);
    assert!(matches!(f.lock(owner(1, 6), &["c"], Mode::Exclusive, None, "refused"), Err(TableError::TooManyWaitersOnConnection { .. })));
}

#[test]
fn duplicate_keys_in_one_request_count_once() {
    let mut f = Fixture::new();
    granted(f.x(owner(1, 0), &["a", "a"], "a"));
    assert_eq!(f.table.stats().locks, 1);
}

#[test]
fn snapshot_lists_holders_and_waiters_in_queue_order() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["a"], "a");
    f.x(owner(2, 0), &["a"], "w2");
    f.s(owner(3, 0), &["a"], "w3");
    f.x(owner(1, 0), &["b"], "b");
    let page = f.table.snapshot("", None, 10);
    assert_eq!(page.next, None);
    assert_eq!(page.keys.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(page.keys[0].waiters.iter().map(|w| w.owner.conn).collect::<Vec<_>>(), [2, 3]);
    let first = f.table.snapshot("", None, 1);
    assert_eq!(first.keys.len(), 1);
    assert_eq!(first.next.as_deref(), Some("a"));
    let second = f.table.snapshot("", first.next.as_deref(), 1);
    assert_eq!(second.keys.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(f.table.snapshot("b", None, 10).keys.len(), 1);
}

#[test]
fn idle_keys_are_forgotten() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["a"], "a");
    f.unlock(owner(1, 0), &["a"]);
    assert_eq!(f.table.stats().keys, 0);
}

#[test]
fn a_queued_grant_that_downgrades_lets_shared_waiters_in() {
    // C holds k0 exclusively and queues [k1, shared k0]; B waits to read k0. When C's
    // request is granted, k0 becomes shared and B must get it in the same step.
    let mut f = Fixture::new();
    f.x(owner(2, 0), &["k1"], "a");
    f.x(owner(0, 1), &["k0"], "c");
    assert_eq!(f.s(owner(0, 0), &["k0"], "b reads k0"), Acquired::Queued);
    assert_eq!(f.s(owner(0, 1), &["k1", "k0"], "c"), Acquired::Queued);
    f.unlock(owner(2, 0), &["k1"]);
    let mut woken = f.woken_names();
    woken.sort();
    assert_eq!(woken, ["b reads k0", "c"]);
}

#[test]
fn a_wait_too_long_for_a_deadline_waits_as_long_as_it_takes() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["k"], "holder");
    let ks = keys(&["k"]);
    let req = LockRequest { owner: owner(2, 0), keys: &ks, mode: Mode::Exclusive, wait: Some(Duration::MAX), value: None };
    assert_eq!(f.table.lock(req, f.now, || "patient", &mut f.woken).unwrap(), Acquired::Queued);
    assert_eq!(f.table.next_deadline(), None);
    f.unlock(owner(1, 0), &["k"]);
    assert_eq!(f.woken_names(), ["patient"]);
}

#[test]
fn owners_that_hold_and_await_nothing_leave_no_record() {
    let mut f = Fixture::new();
    f.x(owner(9, 0), &["busy"], "holder");
    for handle in 1..=50 {
        f.x(owner(1, handle), &["k"], "lock");
        f.unlock(owner(1, handle), &["k"]);
        assert_eq!(f.lock(owner(2, handle), &["busy"], Mode::Exclusive, Some(0), "try").unwrap(), Acquired::Busy);
        assert!(f.lock(owner(3, handle), &[""], Mode::Exclusive, None, "refused").is_err());
        assert_eq!(f.lock(owner(4, handle), &["busy"], Mode::Exclusive, Some(1), "timed out").unwrap(), Acquired::Queued);
    }
    f.advance(1);
    for conn in 1..=4 {
        assert_eq!(f.table.conns.get(&conn).map_or(0, |c| c.owners.len()), 0, "connection {conn}");
    }
}

#[test]
fn a_crowd_of_shared_holders_is_found_by_owner_and_by_token() {
    // More holders than are scanned without an index: every lookup goes through it.
    let mut f = Fixture::with(Limits { lock_delay: Duration::from_secs(5), ..Limits::default() });
    let tokens: Vec<u64> = (0..40).map(|c| granted(f.s(owner(c, 0), &["k"], "reader"))).collect();
    assert!(tokens.iter().all(|&t| f.table.check("k", t)));
    for c in (0..40).step_by(3) {
        assert_eq!(f.unlock(owner(c, 0), &["k"]).released, ["k"]);
        assert!(!f.table.check("k", tokens[c as usize]));
    }
    // A re-lock is a new grant with a new token, found under the new token only.
    let renewed = granted(f.s(owner(1, 0), &["k"], "again"));
    assert!(f.table.check("k", renewed) && !f.table.check("k", tokens[1]));
    // A dead reader lingers (and blocks a writer) until its lock-delay is over.
    f.table.release_connection(2, true, f.now, &mut f.woken);
    assert!(!f.table.check("k", tokens[2]), "a lingering lock is not valid");
    assert_eq!(f.lock(owner(99, 0), &["k"], Mode::Shared, Some(0), "late reader").unwrap(), Acquired::Busy);
    for c in (0..40).filter(|c| c % 3 != 0 && *c != 2) {
        f.unlock(owner(c, 0), &["k"]);
    }
    assert_eq!(f.table.stats().locks, 1, "only the lingering one is left");
    assert_eq!(f.x(owner(99, 0), &["k"], "writer"), Acquired::Queued);
    f.advance(5);
    assert_eq!(f.woken_names(), ["writer"]);
}

#[test]
fn shutting_down_answers_every_waiter_and_grants_nothing_after() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["a"], "holder");
    assert_eq!(f.x(owner(2, 0), &["a"], "waiter"), Acquired::Queued);
    f.table.shut_down(&mut f.woken);
    assert_eq!(f.woken(), [("waiter", WaitEnd::ShuttingDown)]);
    assert_eq!(f.lock(owner(3, 0), &["b"], Mode::Exclusive, None, "late"), Err(TableError::ShuttingDown));
    f.table.release_connection(1, true, f.now, &mut f.woken);
    assert!(f.woken().is_empty(), "releases grant nothing");
    assert_eq!(f.table.stats().waiters, 0);
}

#[test]
fn withdrawing_a_wait_keeps_what_the_owner_holds_and_lets_others_in() {
    let mut f = Fixture::new();
    f.x(owner(1, 0), &["a"], "holder");
    f.x(owner(2, 0), &["b"], "other");
    assert_eq!(f.x(owner(2, 0), &["a"], "waiter"), Acquired::Queued);
    assert_eq!(f.s(owner(3, 0), &["a"], "behind"), Acquired::Queued);
    assert!(f.table.withdraw(owner(2, 0), f.now, &mut f.woken));
    assert_eq!(f.woken(), [("waiter", WaitEnd::Cancelled)]);
    assert!(!f.table.withdraw(owner(2, 0), f.now, &mut f.woken), "nothing left to withdraw");
    assert!(f.table.token_of(owner(2, 0), "b").is_some(), "its lock stays");
    f.unlock(owner(1, 0), &["a"]);
    assert_eq!(f.woken_names(), ["behind"]);
}

#[test]
fn value_locks_share_one_value_and_queue_fifo_behind_another() {
    let mut f = Fixture::new();
    let valued = |f: &mut Fixture, o: Owner, v: &str, name: &'static str| {
        let ks = keys(&["k"]);
        let req = LockRequest { owner: o, keys: &ks, mode: Mode::Shared, wait: None, value: Some(v) };
        f.table.lock(req, f.now, || name, &mut f.woken)
    };
    assert!(matches!(valued(&mut f, owner(1, 0), "red", "r1"), Ok(Acquired::Granted { .. })));
    assert!(matches!(valued(&mut f, owner(2, 0), "red", "r2"), Ok(Acquired::Granted { .. })), "the same value shares");
    assert_eq!(valued(&mut f, owner(3, 0), "blue", "b1"), Ok(Acquired::Queued), "another value waits");
    assert_eq!(f.s(owner(4, 0), &["k"], "plain"), Acquired::Queued, "plain shared is a value of its own");
    assert_eq!(valued(&mut f, owner(5, 0), "red", "r3"), Ok(Acquired::Queued), "no barging past the queue");
    assert_eq!(valued(&mut f, owner(1, 0), "blue", "x"), Err(TableError::ValueConflict));
    f.unlock(owner(1, 0), &["k"]);
    assert!(f.woken().is_empty(), "red is still held");
    f.unlock(owner(2, 0), &["k"]);
    assert_eq!(f.woken_names(), ["b1"]);
    f.unlock(owner(3, 0), &["k"]);
    assert_eq!(f.woken_names(), ["plain"]);
    f.unlock(owner(4, 0), &["k"]);
    assert_eq!(f.woken_names(), ["r3"]);
    let page = f.table.snapshot("", None, 10);
    assert_eq!(page.keys[0].holders[0].value.as_deref(), Some("red"));
    f.unlock(owner(5, 0), &["k"]);
    assert_eq!(f.table.values.in_use(), 0, "value ids are freed with their last user");
}

#[test]
fn a_released_connection_grants_its_waiters_the_same_tokens_in_every_table() {
    // Cluster nodes replay one log into tables of their own, whose hash sets each keep
    // the keys in an order of their own: a release must still grant the waiters of its
    // keys in one order, with the same tokens, in every table.
    const KEYS: [&str; 8] = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"];
    let grants_after_release = || {
        let mut f = Fixture::new();
        let first = granted(f.x(owner(1, 0), &KEYS, "holder"));
        for (i, key) in KEYS.iter().enumerate() {
            assert!(matches!(f.lock(owner(2 + i as ConnId, 0), &[key], Mode::Exclusive, Some(60), key), Ok(Acquired::Queued)));
        }
        f.table.release_connection(1, true, f.now, &mut f.woken);
        let woken = f.woken();
        woken.into_iter().map(|(name, end)| match end {
            WaitEnd::Granted { token } => (name, token - first),
            other => panic!("{name} was not granted: {other:?}"),
        }).collect::<Vec<_>>()
    };
    let expected = grants_after_release();
    for _ in 0..16 {
        assert_eq!(grants_after_release(), expected);
    }
}

/// A table rebuilt from the image of `f`'s, with the same waiter names.
fn rebuilt(f: &Fixture) -> Table {
    LockTable::rebuild(Limits::default(), f.table.image(|&w| w).unwrap(), f.now, |_, w| w).expect("an image rebuilds")
}

#[test]
fn a_rebuilt_table_keeps_a_shared_waiter_behind_an_upgrade_that_came_later() {
    // "late" queued behind an exclusive waiter that has gone; the upgrade that arrived
    // after it still stands ahead of it. Asked for again in arrival order, "late" would
    // be granted next to the shared holders.
    let mut f = Fixture::new();
    granted(f.s(owner(1, 0), &["k"], "reader"));
    granted(f.s(owner(2, 1), &["k"], "upgrader"));
    assert_eq!(f.x(owner(3, 0), &["k"], "writer"), Acquired::Queued);
    assert_eq!(f.s(owner(2, 0), &["k"], "late"), Acquired::Queued);
    assert_eq!(f.x(owner(2, 1), &["k"], "upgrade"), Acquired::Queued);
    f.table.release_owner(owner(3, 0), f.now, &mut f.woken);
    assert_eq!(f.woken_names(), ["writer"], "cancelled, nobody granted");

    let mut copy = rebuilt(&f);
    assert_eq!(copy.image(|&w| w).unwrap(), f.table.image(|&w| w).unwrap());
    assert_eq!(copy.stats().waiters, 2);
    let mut woken = Vec::new();
    copy.unlock(owner(1, 0), &keys(&["k"]), f.now, &mut woken);
    assert_eq!(woken.iter().map(|w| w.waiter).collect::<Vec<_>>(), ["upgrade"]);
}

#[test]
fn a_rebuilt_table_grants_in_the_order_of_the_original() {
    // "first" waits on [k2, k0] and is parked on k0; a later upgrade on k2 blocks it
    // there too. Which key it is parked on decides whether it or "second" (parked on
    // k0) is looked at first when both keys come free together.
    let run = |f: &mut Fixture| -> Vec<(&'static str, u64)> {
        f.table.release_connection(2, false, f.now, &mut f.woken);
        f.woken().into_iter().map(|(n, end)| match end {
            WaitEnd::Granted { token } => (n, token),
            other => panic!("{n}: {other:?}"),
        }).collect()
    };
    let mut f = Fixture::new();
    granted(f.x(owner(2, 0), &["k0"], "holder"));
    granted(f.s(owner(2, 1), &["k2"], "reader"));
    assert_eq!(f.s(owner(0, 0), &["k2", "k0"], "first"), Acquired::Queued);
    assert_eq!(f.s(owner(0, 1), &["k0"], "second"), Acquired::Queued);
    assert_eq!(f.lock(owner(2, 1), &["k2"], Mode::Exclusive, Some(0), "upgrade"), Ok(Acquired::Granted { token: 3 }));

    let mut copy = Fixture { table: rebuilt(&f), now: f.now, woken: Vec::new() };
    let original = run(&mut f);
    assert_eq!(original.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["first", "second"]);
    assert_eq!(run(&mut copy), original);
}

#[test]
fn an_owner_that_locks_and_unlocks_again_and_again_lists_each_held_key_once() {
    let mut f = Fixture::new();
    let a = owner(1, 1);
    f.x(a, &["kept"], "a");
    for _ in 0..100 {
        f.x(a, &["k", "l"], "a");
        assert_eq!(f.unlock(a, &["k"]).released, vec!["k".to_string()]);
        f.unlock(a, &["l"]);
    }
    f.x(a, &["k"], "a");
    assert_eq!(f.table.owner(a).unwrap().held_keys.len(), 2);
    assert_eq!(f.table.release_owner(a, f.now, &mut f.woken), (2, 0));
    assert_eq!(f.table.stats().locks, 0);
    assert_eq!(f.table.stats().keys, 0);
}

#[test]
fn a_key_record_stays_within_64_bytes() {
    // One per held lock: a few bytes more cost megabytes at a million locks.
    assert!(std::mem::size_of::<keys::KeyState>() <= 64, "{} bytes", std::mem::size_of::<keys::KeyState>());
}


/// Every key an owner lists is held by it, once, and its holder knows where it is listed.
fn assert_held_lists_are_exact(table: &Table) {
    for (&conn, state) in &table.conns {
        for (&handle, o) in &state.owners {
            let owner = Owner { conn, handle };
            for (at, key) in o.held_keys.iter().enumerate() {
                let holder = table.keys.get(key).and_then(|s| s.holder(owner)).expect("a listed key is held");
                assert_eq!(holder.listed_at as usize, at, "{key}");
            }
            let distinct: HashSet<&Key> = o.held_keys.iter().collect();
            assert_eq!(distinct.len(), o.held_keys.len());
        }
    }
}

#[test]
fn unlocks_in_any_order_keep_each_owners_list_exact() {
    let mut f = Fixture::new();
    let (a, b) = (owner(1, 1), owner(2, 1));
    let names: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let all: Vec<&str> = names.iter().map(|k| k.as_str()).collect();
    f.x(a, &all[..20], "a");
    f.s(b, &all[20..], "b");
    // Unlock in a scrambled order (7 is coprime to 20), relock some, unlock again.
    for step in 0..20 {
        let i = (step * 7) % 20;
        f.unlock(a, &[all[i]]);
        f.unlock(b, &[all[20 + (step * 3) % 20]]);
        assert_held_lists_are_exact(&f.table);
        if step % 3 == 0 {
            f.x(a, &[all[i], all[(i + 1) % 20]], "a");
            assert_held_lists_are_exact(&f.table);
        }
    }
    let held = f.table.owner(a).map_or(0, |o| o.held_keys.len());
    assert_eq!(f.table.release_owner(a, f.now, &mut f.woken), (held, 0));
    assert_held_lists_are_exact(&f.table);
}

#[test]
fn a_big_release_goes_in_slices_in_the_same_order_whatever_the_owners_history() {
    // Two copies of a table whose owner took the same keys in opposite orders (as a cluster
    // node restored from a snapshot may list them differently) grant the same waiters in
    // the same order, with the same tokens, when it releases them.
    let names: Vec<String> = (0..3 * release::SLICE).map(|i| format!("k{i:05}")).collect();
    let run = |reversed: bool| {
        let mut f = Fixture::new();
        let a = owner(1, 1);
        let mut order: Vec<&str> = names.iter().map(|k| k.as_str()).collect();
        if reversed {
            order.reverse();
        }
        for chunk in order.chunks(100) {
            f.x(a, chunk, "a");
        }
        f.lock(owner(2, 1), &["k00100"], Mode::Shared, Some(60), "b").unwrap();
        f.lock(owner(3, 1), &["k02500"], Mode::Shared, Some(60), "c").unwrap();
        let mut release = f.table.start_release_connection(1, false, f.now, &mut f.woken);
        assert!(!release.is_done(), "more than a slice is not released at once");
        assert!(f.woken().is_empty());
        release.sort_keys();
        let mut grants = Vec::new();
        while !release.is_done() {
            f.table.release_slice(&mut release, f.now, &mut f.woken);
            grants.push(f.woken.drain(..).map(|w| (w.waiter, w.end)).collect::<Vec<_>>());
        }
        assert_eq!(release.counts(), (names.len(), 0));
        assert_eq!(f.table.stats().locks, 2);
        grants
    };
    let grants = run(false);
    assert_eq!(grants.len(), 3);
    assert_eq!(grants.iter().flatten().map(|(name, _)| *name).collect::<Vec<_>>(), ["c", "b"]);
    assert_eq!(run(true), grants);
}

#[test]
fn a_connection_of_many_owners_ends_their_waits_at_once_and_releases_in_the_same_order_in_every_copy() {
    // Past SLICE owners, the owners are taken apart outside the lock: each copy of the
    // table (its own hash seed, so its own map order) must still release alike.
    let owners = 3 * release::SLICE as u64;
    let run = |reversed: bool| {
        let mut f = Fixture::new();
        f.x(owner(9, 0), &["elsewhere"], "holder");
        let mut handles: Vec<u64> = (1..=owners).collect();
        if reversed {
            handles.reverse();
        }
        for &handle in &handles {
            f.x(owner(1, handle), &[&format!("k{handle:05}")], "a");
        }
        assert_eq!(f.x(owner(1, owners + 1), &["elsewhere"], "waits 1"), Acquired::Queued);
        assert_eq!(f.x(owner(1, owners + 2), &["elsewhere"], "waits 2"), Acquired::Queued);
        f.lock(owner(2, 1), &["k00100"], Mode::Shared, Some(60), "b").unwrap();
        f.lock(owner(3, 1), &["k02500"], Mode::Shared, Some(60), "c").unwrap();
        let mut release = f.table.start_release_connection(1, false, f.now, &mut f.woken);
        assert!(!release.is_done(), "many owners are not released at once");
        assert_eq!(f.woken(), [("waits 1", WaitEnd::Cancelled), ("waits 2", WaitEnd::Cancelled)], "their waits end at once");
        release.sort_keys();
        let mut grants = Vec::new();
        while !release.is_done() {
            f.table.release_slice(&mut release, f.now, &mut f.woken);
            grants.push(f.woken.drain(..).map(|w| (w.waiter, w.end)).collect::<Vec<_>>());
        }
        assert_eq!(release.counts(), (owners as usize, 2));
        assert_eq!(f.table.stats().locks, 3, "the holder's, b's and c's");
        grants
    };
    let grants = run(false);
    assert_eq!(grants.iter().flatten().map(|(name, _)| *name).collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(run(true), grants);
}

#[test]
fn waits_due_together_end_a_slice_per_step_earliest_first() {
    let mut f = Fixture::new();
    f.x(owner(9, 0), &["k"], "holder");
    // Deadlines 1 to 3 s away, all due by 5 s.
    let waits = 2 * release::SLICE as u64 + 10;
    for handle in 1..=waits {
        f.lock(owner(1, handle), &["k"], Mode::Exclusive, Some(1 + handle % 3), "w").unwrap();
    }
    let late = f.now + Duration::from_secs(5);
    let mut steps = Vec::new();
    loop {
        let more = f.table.expire_step(late, &mut f.woken);
        steps.push(f.woken().len());
        if !more {
            break;
        }
    }
    assert_eq!(steps, [release::SLICE, release::SLICE, 10]);
    assert_eq!(f.table.stats().waiters, 0);
    assert!(!f.table.expire_step(late, &mut f.woken), "nothing more is due");
    // Earliest first: a step ends the waits that have waited longest past their time.
    f.lock(owner(2, 1), &["k"], Mode::Exclusive, Some(2), "later").unwrap();
    f.lock(owner(2, 2), &["k"], Mode::Exclusive, Some(1), "sooner").unwrap();
    f.table.expire(f.now + Duration::from_secs(3), &mut f.woken);
    assert_eq!(f.woken_names(), ["sooner", "later"]);
}

#[test]
fn a_late_expiry_decides_as_an_on_time_one() {
    // E's end at 1 s lets W share k with S, before W's own deadline at 2 s: so it is,
    // even when expiry first runs at 3 s.
    let mut f = Fixture::new();
    f.s(owner(1, 0), &["k"], "S");
    f.lock(owner(2, 0), &["k"], Mode::Exclusive, Some(1), "E").unwrap();
    f.lock(owner(3, 0), &["k"], Mode::Shared, Some(2), "W").unwrap();
    f.advance(3);
    let woken = f.woken();
    assert_eq!(woken[0], ("E", WaitEnd::TimedOut));
    assert_eq!(woken[1].0, "W");
    assert!(matches!(woken[1].1, WaitEnd::Granted { .. }), "{woken:?}");
}
