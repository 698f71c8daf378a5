<?php

// The chaos tests at `make test` size: PHP workers with the real pklock.so lock three keys
// while workers (holders first) are SIGKILLed and replaced, against one lockd and against a
// three-node cluster whose nodes are also killed and frozen; the merged history must keep
// every promise HistoryChecker knows. `make chaos` and `make chaos-cluster` run the same
// for longer; see docs/RELIABILITY.md.

declare(strict_types=1);

namespace PkLock\Tests\Chaos;

use PHPUnit\Framework\TestCase;
use PkLock\Testing\EtcdServer;

final class ChaosTest extends TestCase
{
    public function testSigkilledWorkersNeverBreakALocksPromises(): void
    {
        $stats = $this->runChaos(new ChaosRun(new SingleLockd(), workers: 6, seconds: 12.0));
        // The run must have tested something: holders were killed and locks kept moving.
        self::assertGreaterThan(0, $stats['killed_holding'], 'no holder was killed');
        self::assertGreaterThan($stats['kills'], $stats['grants'], 'fewer grants than kills');
    }

    public function testKilledAndFrozenClusterNodesNeverBreakALocksPromises(): void
    {
        if (!EtcdServer::isInstalled()) {
            self::markTestSkipped('etcd is not installed (apt-get install etcd-server)');
        }
        $stats = $this->runChaos(new ChaosRun(new LockdCluster(ttl: 4, faultGapSeconds: 3.0), workers: 6, seconds: 30.0));
        self::assertGreaterThan(0, $stats['node_kills'], 'no node was killed');
        self::assertGreaterThan(0, $stats['node_pauses'], 'no node was frozen');
        self::assertGreaterThan($stats['kills'], $stats['grants'], 'fewer grants than kills');
    }

    /** Runs the chaos, prints its counts, asserts no violation; returns the counts. */
    private function runChaos(ChaosRun $run): array
    {
        $result = $run->run(new HistoryChecker());
        fwrite(STDERR, "\nchaos: " . json_encode($result['stats']) . "\n");
        self::assertSame([], $result['violations'], "chaos history broke a promise (logs kept in {$result['dir']})");
        $run->cleanUp();
        return $result['stats'];
    }
}
