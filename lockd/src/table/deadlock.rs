//! Deadlock detection: a depth-first search of the wait-for graph from the owner about to
//! wait, with a budget so that no single request can make the server walk a huge graph.

use pklock_proto::{CycleStep, Mode};

use super::{HashSet, Key, LockTable, Owner, RequestId};

/// The search ran out of steps: it cannot tell whether waiting is safe.
pub(super) type BudgetSpent = usize;

/// A step of the search: an owner, who blocks it (key, owner), and how many of those were
/// followed.
type Frame = (Owner, Vec<(Key, Owner)>, usize);

impl<W> LockTable<W> {
    /// Who `rid` waits for, key by key: incompatible holders, and the incompatible
    /// waiters ahead of it up to the nearest exclusive one (which itself waits for
    /// everything further ahead, so the rest is reached through it). Each edge costs one
    /// step of `budget`.
    fn blockers(&self, rid: RequestId, budget: &mut usize) -> Result<Vec<(Key, Owner)>, BudgetSpent> {
        let req = &self.pending[&rid];
        let mut out = Vec::new();
        let spend = |budget: &mut usize| {
            *budget = budget.checked_sub(1).ok_or(self.limits.deadlock_budget)?;
            Ok::<(), BudgetSpent>(())
        };
        for wait in &req.queued_on {
            let state = self.keys.get(&wait.key).expect("a waiter's key has state");
            // Exclusive is held alone, so a shared request past the holders check has no
            // holder edges at all: skip walking what may be thousands of shared holders.
            if state.holders_block(req.mode, req.value, wait.upgrade) {
                for h in state.holders() {
                    spend(budget)?;
                    let compatible = h.mode == Mode::Shared && req.mode == Mode::Shared && h.value == req.value;
                    if h.owner != req.owner && (h.lingering || !compatible) {
                        out.push((wait.key.clone(), h.owner));
                    }
                }
            }
            match req.mode {
                // In a shared request's way: the nearest exclusive waiter ahead (which
                // waits for everything further ahead) and the shared waiters of other
                // values between it and the request.
                Mode::Shared => {
                    let nearest_exclusive = state.nearest_exclusive_ahead(rid);
                    if let Some(r) = nearest_exclusive {
                        spend(budget)?;
                        out.push((wait.key.clone(), self.pending[&r].owner));
                    }
                    // Everything in the queue is behind an upgrade, so only an exclusive
                    // request in the queue itself bounds the walk.
                    for r in state.other_values_ahead(rid, req.value, state.nearest_queued_exclusive_ahead(rid)) {
                        spend(budget)?;
                        out.push((wait.key.clone(), self.pending[&r].owner));
                    }
                }
                Mode::Exclusive => {
                    for (r, exclusive) in state.ahead_of(rid) {
                        spend(budget)?;
                        out.push((wait.key.clone(), self.pending[&r].owner));
                        if exclusive {
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Depth-first search of the wait-for graph from the owner of `rid`; returns the
    /// cycle through it, if any, or the budget if the search needed more steps.
    pub(super) fn find_cycle(&self, rid: RequestId) -> Result<Option<Vec<CycleStep>>, BudgetSpent> {
        let mut budget = self.limits.deadlock_budget;
        let start = self.pending[&rid].owner;
        let mut visited = HashSet::default();
        // Each frame: an owner, its outgoing edges, and the next edge to follow.
        let mut stack: Vec<Frame> = vec![(start, self.blockers(rid, &mut budget)?, 0)];
        visited.insert(start);
        while let Some((_, edges, next)) = stack.last_mut() {
            let Some((_, to)) = edges.get(*next).cloned() else {
                stack.pop();
                continue;
            };
            *next += 1;
            if to == start {
                return Ok(Some(
                    stack
                        .iter()
                        .map(|(owner, edges, next)| CycleStep {
                            connection: owner.conn,
                            owner: owner.handle,
                            key: edges[next - 1].0.to_string(),
                        })
                        .collect(),
                ));
            }
            if !visited.insert(to) {
                continue;
            }
            if let Some(next_rid) = self.owner(to).and_then(|o| o.pending) {
                stack.push((to, self.blockers(next_rid, &mut budget)?, 0));
            }
        }
        Ok(None)
    }
}
