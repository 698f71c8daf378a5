//! Time: waits that run out and lock-delays that end. The table never reads a clock;
//! the server calls [`LockTable::expire`] when [`LockTable::next_deadline`] comes.

use std::cmp::Reverse;
use std::time::Instant;

use super::release::SLICE;
use super::{Deadline, LockTable, Owner, WaitEnd, Wakeup};

impl<W> LockTable<W> {
    /// Ends the waits whose time ran out and the lock-delays that are over, in steps
    /// (tests; the server takes the steps itself, see [`expire_step`](Self::expire_step)).
    pub fn expire(&mut self, now: Instant, woken: &mut Vec<Wakeup<W>>) {
        while self.expire_step(now, woken) {}
    }

    /// Ends at most [`SLICE`] of the waits and lock-delays due by `now`; true when more are
    /// due. Waits often come due together (a million of them after the server was not
    /// scheduled for a second) and ending a million took 2 s in one step: the caller lets
    /// others at the table between steps.
    ///
    /// They end in deadline order, and what the ends of one moment free is granted before
    /// the next moment's are looked at: a server that comes late decides as one on time
    /// would have (a wait due later may be granted rather than end), except that more than
    /// [`SLICE`] deadlines of one moment are split between steps.
    pub fn expire_step(&mut self, now: Instant, woken: &mut Vec<Wakeup<W>>) -> bool {
        let mut dirty = Vec::new();
        let mut moment = None;
        for _ in 0..SLICE {
            let Some(&Reverse((at, _))) = self.deadlines.peek() else { break };
            if at > now {
                break;
            }
            if moment.is_some_and(|m| m != at) {
                self.process(std::mem::take(&mut dirty), now, woken);
            }
            moment = Some(at);
            let Reverse((_, deadline)) = self.deadlines.pop().expect("peeked");
            match deadline {
                Deadline::Wait(rid) => {
                    if self.pending.contains_key(&rid) {
                        let expired = self.cancel(rid);
                        self.forget_if_idle(expired.owner);
                        self.timeouts += 1;
                        dirty.extend(expired.queued_on.into_iter().map(|w| w.key));
                        woken.push(Wakeup { waiter: expired.waiter, end: WaitEnd::TimedOut });
                    }
                }
                Deadline::Linger { key, owner } => {
                    if let Some(state) = self.keys.get_mut(&key) {
                        if let Some(holder) = state.remove_holder(owner) {
                            self.values.release(holder.value);
                            self.held -= 1;
                            self.lingering -= 1;
                        }
                        dirty.push(key);
                    }
                }
            }
        }
        self.process(dirty, now, woken);
        self.next_deadline().is_some_and(|at| at <= now)
    }

    /// Ends `owner`'s wait as if its time ran out, if it is the one `is_it` recognises by
    /// its waiter. Cluster nodes time waits outside the table (replicas read no clock)
    /// and end them with this; a wait that ended meanwhile is left alone.
    pub fn time_out(&mut self, owner: Owner, is_it: impl FnOnce(&W) -> bool, now: Instant, woken: &mut Vec<Wakeup<W>>) -> bool {
        let Some(rid) = self.owner(owner).and_then(|o| o.pending) else {
            return false;
        };
        if !is_it(&self.pending[&rid].waiter) {
            return false;
        }
        let expired = self.cancel(rid);
        self.forget_if_idle(owner);
        self.timeouts += 1;
        woken.push(Wakeup { waiter: expired.waiter, end: WaitEnd::TimedOut });
        self.process(expired.queued_on.into_iter().map(|w| w.key).collect(), now, woken);
        true
    }

    /// When `expire` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    pub(super) fn push_deadline(&mut self, at: Instant, what: Deadline) {
        self.deadlines.push(Reverse((at, what)));
    }

    /// Granted or cancelled waits leave their deadline behind; drop them once they
    /// outnumber the live ones, so the heap stays proportional to what is waiting.
    pub(super) fn compact_deadlines(&mut self) {
        let live = self.pending.len() + self.lingering;
        if self.deadlines.len() > 2 * live + 1024 {
            let pending = &self.pending;
            self.deadlines.retain(|Reverse((_, d))| match d {
                Deadline::Wait(rid) => pending.contains_key(rid),
                Deadline::Linger { .. } => true,
            });
        }
    }
}
