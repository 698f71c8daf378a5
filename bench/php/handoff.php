<?php

// Contended handoff: a holder process releases a lock that a waiter process is blocked on;
// measured from just before the release call to just after the waiter's grant returns
// (hrtime is CLOCK_MONOTONIC, one clock for every process on the machine). Peers with a
// blocking wait: pklock.so (queued in lockd), pg_advisory_lock, flock, and symfony/lock's
// Lock::acquire(true) on its RedisStore, which polls every ~100 ms: its holder releases at
// a random moment of the waiter's poll period, and it gets fewer samples. pklock's
// rpc('ping') is timed just before each of its handoffs, so both see the same scheduling.
//
//   bench/php/handoff.php [--samples=500] [--polling-samples=30] [--peers=pklock,postgres,flock,symfony-redis]
//
// Needs the servers bench/php/run starts (it sets their addresses). Prints JSON lines.

declare(strict_types=1);

require_once __DIR__ . '/lib.php';

const KEY = 'bench:handoff';
const SETTLE_US = 2000;          // holder's pause after the waiter said it is about to block
const SYMFONY_POLL_US = 110000;  // Lock::acquire(true) sleeps 90..110 ms between tries
const TTL_MS = 300000;           // symfony's default TTL; nobody dies here

if (($argv[1] ?? '') === 'waiter') {
    waiter($argv[2]);
    exit(0);
}

$options = options($argv, ['samples' => 500, 'polling-samples' => 30, 'peers' => 'pklock,postgres,flock,symfony-redis']);
foreach (explode(',', $options['peers']) as $peer) {
    $polls = $peer === 'symfony-redis';
    $samples = $polls ? $options['polling-samples'] : $options['samples'];
    $holder = locker($peer, TTL_MS);
    $client = $holder instanceof PkLockLocker ? $holder->client : null;
    $waiter = new Child('handoff.php', ['waiter', $peer]);
    $waiter->receive(); // ready
    $handoffs = $pings = [];
    for ($i = 0; $i < $samples; $i++) {
        $holder->acquire(KEY);
        $waiter->send('wait');
        $waiter->receive(); // about to block
        usleep($polls ? random_int(SETTLE_US, SETTLE_US + SYMFONY_POLL_US) : SETTLE_US);
        if ($client !== null) {
            $start = hrtime(true);
            $client->rpc('ping');
            $pings[] = (hrtime(true) - $start) / 1e3;
        }
        $released = hrtime(true);
        $holder->release(KEY);
        $handoffs[] = ((int) $waiter->receive() - $released) / 1e3;
    }
    $waiter->close();
    fprintf(STDERR, "handoff: %s, %d samples, median %.1f µs\n", $peer, $samples, percentile($handoffs, 50));
    foreach ([50, 99] as $p) {
        result('handoff', $peer, 'release → waiter granted', "handoff_p$p", percentile($handoffs, $p), 'µs', ['samples' => $samples]);
    }
    if ($pings !== []) {
        foreach ([50, 99] as $p) {
            result('handoff', $peer, 'ping, just before each handoff', "ping_p$p", percentile($pings, $p), 'µs', ['samples' => $samples]);
        }
    }
}

/** A child: on each line from the holder, says it is about to block, waits for the lock, sends the grant's hrtime and releases. */
function waiter(string $peer): void
{
    $locker = locker($peer, TTL_MS);
    echo "ready\n";
    while (fgets(STDIN) !== false) {
        echo "waiting\n";
        $locker->acquire(KEY);
        $granted = hrtime(true);
        $locker->release(KEY); // before answering, so the holder's next acquire finds the lock free
        echo "$granted\n";
    }
}
