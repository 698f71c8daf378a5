<?php

// The end-of-run check of one lockd (or one cluster node) that ChaosTarget::leftovers()
// runs: once every worker is gone it must, within a bound, hold no lock, queue no waiter
// and count no connection but the observer's.

declare(strict_types=1);

namespace PkLock\Tests\Chaos;

use PkLock\Testing\LockdServer;
use PkLockClient;

final class Leftovers
{
    /**
     * @param float $seconds how long the server may take to get there (a cluster releases a
     *        session whose node died only when its TTL runs out)
     * @return array{problem: ?string, stat: array<string, mixed>} the last `stat` seen
     */
    public static function of(LockdServer $server, float $seconds, string $name = 'lockd'): array
    {
        // A client of its own per server: a node list would share one connection.
        $observer = new PkLockClient($server->host() . ':' . $server->port());
        $deadline = microtime(true) + $seconds;
        do {
            $stat = $observer->rpc('stat');
            // The observer's own connection is the only one left.
            if ($stat['locks'] === 0 && $stat['waiters'] === 0 && $stat['connections'] === 1) {
                $observer->close();
                return ['problem' => null, 'stat' => $stat];
            }
            usleep(50_000);
        } while (microtime(true) < $deadline);
        $observer->close();
        $problem = sprintf('%s still has %d locks, %d waiters and %d connections %.0f s after every worker is gone', $name, $stat['locks'], $stat['waiters'], $stat['connections'] - 1, $seconds);
        return ['problem' => $problem, 'stat' => $stat];
    }
}
