<?php

// What a chaos run fights against: one lockd (SingleLockd) or a cluster of lockd nodes on
// etcd (LockdCluster). ChaosRun starts it, gives its workers servers(), lets it inject and
// heal its own faults between worker kills (disturb), and asks it at the end what it still
// holds and when its faults may have excused a late, failed or lost lock.

declare(strict_types=1);

namespace PkLock\Tests\Chaos;

interface ChaosTarget
{
    public function start(): void;

    /** What the workers give PkLockClient: one host:port, or a node list. */
    public function servers(): string;

    /** The io_timeouts workers are given, one picked at random per worker (seconds). */
    public function ioTimeouts(): array;

    /**
     * Called by the driver between worker kills: starts a fault when one is due, heals the
     * current one when its time is up. Starts none that could outlast `$until` (hrtime).
     */
    public function disturb(int $until): void;

    /** Heals the current fault, if any (the end of the run, or a failure). */
    public function heal(): void;

    /**
     * The intervals [from, to] (hrtime ns) in which a fault of this target may have made a
     * lock fail, come late, time out on a free key or be lost: each fault from its start to
     * its heal plus the time clients take to notice (empty for a target without faults).
     *
     * @return list<array{0: int, 1: int}>
     */
    public function disturbed(): array;

    /**
     * Once every worker is gone: what the servers still hold or queue for them.
     *
     * @return list<string> one line per problem
     */
    public function leftovers(): array;

    /** @return array<string, int> the target's own counts (faults injected, server-side numbers) */
    public function stats(): array;

    public function stop(): void;
}
