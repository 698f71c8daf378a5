<?php

// Death of a holder: a holder process takes a lock and is killed (SIGKILL) while a waiter
// process is blocked on it; measured from just before the kill to just after the waiter's
// grant. pklock.so (lockd sees the connection close), PostgreSQL advisory locks (the
// session ends) and flock (the kernel drops the lock) free the lock at once; the Redis
// recipe and memcached can only let the lock expire: their holder sets a TTL (--ttl-ms;
// memcached rounds up to whole seconds) and their waiter polls every millisecond, so they
// measure the TTL, which real deployments must set above their longest critical section.
// The first row, "teardown", is the floor under all of them: a PHP process that holds
// nothing, from SIGKILL until it is reaped (the kernel unmaps its memory before it closes
// its files and sockets).
//
//   bench/php/death.php [--samples=100] [--ttl-samples=3] [--ttl-ms=1000] [--peers=teardown,pklock,postgres,flock,redis,memcached]
//
// Needs the servers bench/php/run starts (it sets their addresses). Prints JSON lines.

declare(strict_types=1);

require_once __DIR__ . '/lib.php';

const KEY = 'bench:death';
const SETTLE_US = 2000; // pause after the waiter said it is about to block
const TTL_PEERS = ['redis', 'memcached'];

if (($argv[1] ?? '') === 'holder' || ($argv[1] ?? '') === 'waiter') {
    $locker = $argv[2] === 'teardown' ? null : locker($argv[2], (int) $argv[3]);
    $argv[1] === 'holder' ? holder($locker) : waiter($locker);
    exit(0);
}

$options = options($argv, ['samples' => 100, 'ttl-samples' => 3, 'ttl-ms' => 1000, 'peers' => 'teardown,pklock,postgres,flock,redis,memcached']);
foreach (explode(',', $options['peers']) as $peer) {
    $ttlMs = in_array($peer, TTL_PEERS, true) ? $options['ttl-ms'] : 0;
    $samples = $ttlMs > 0 ? $options['ttl-samples'] : $options['samples'];
    $args = [$peer, (string) ($ttlMs ?: 300000)];
    $waiter = $peer === 'teardown' ? null : new Child('death.php', ['waiter', ...$args]);
    $waiter?->receive(); // ready
    $deaths = [];
    for ($i = 0; $i < $samples; $i++) {
        $holder = new Child('death.php', ['holder', ...$args]);
        $holder->receive(); // holds the lock
        $waiter?->send('wait');
        $waiter?->receive(); // about to block
        usleep(SETTLE_US);
        $killed = hrtime(true);
        $holder->kill();
        if ($waiter === null) {
            $holder->close(); // returns once the process is reaped
            $deaths[] = (hrtime(true) - $killed) / 1e3;
        } else {
            $deaths[] = ((int) $waiter->receive() - $killed) / 1e3;
            $holder->close();
        }
    }
    $waiter?->close();
    fprintf(STDERR, "death: %s, %d samples, median %.1f µs\n", $peer, $samples, percentile($deaths, 50));
    $case = match (true) {
        $peer === 'teardown' => 'process killed → reaped, no lock',
        $ttlMs > 0 => "holder killed, TTL $ttlMs ms",
        default => 'holder killed',
    };
    foreach ([50, 99] as $p) {
        result('death', $peer, $case, "death_p$p", percentile($deaths, $p), 'µs', ['samples' => $samples, 'ttl_ms' => $ttlMs]);
    }
}

/** A child: takes the lock (if any), says so, and holds it until it is killed (or its parent goes). */
function holder(?Locker $locker): void
{
    $locker?->acquire(KEY);
    echo "held\n";
    fgets(STDIN);
}

/** A child: on each line from the parent, says it is about to block, waits for the lock, sends the grant's hrtime and releases. */
function waiter(Locker $locker): void
{
    echo "ready\n";
    while (fgets(STDIN) !== false) {
        echo "waiting\n";
        $locker->acquire(KEY);
        $granted = hrtime(true);
        $locker->release(KEY);
        echo "$granted\n";
    }
}
