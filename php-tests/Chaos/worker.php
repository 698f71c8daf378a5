<?php

// One chaos worker (started by ChaosRun, killed by it at random): takes locks from a small
// set of keys in a loop, as a PHP job would, and appends what it saw to its own log, one
// JSON line per event, so that HistoryChecker can judge the merged history afterwards.
//
//   php -n -d extension=/abs/modules/pklock.so worker.php SERVERS LOG SEED KEYS WAIT UNTIL IO_TIMEOUT
//
// SERVERS is what PkLockClient takes: one host:port, or a cluster's node list. KEYS is a
// comma-separated list, WAIT the lock wait in seconds, UNTIL the hrtime(true) after which
// no new lock is requested, IO_TIMEOUT the client's io_timeout (seconds). Times are
// hrtime(true) (CLOCK_MONOTONIC, the same clock in every process of the machine), in
// nanoseconds. The grant is logged after lock() returns and the release before unlock()
// is sent, so each logged hold lies inside the server's real one (as long as the holder's
// session lives): an overlap in the log is an overlap in the server.
//
// Before releasing, a holder "commits": it asks the server whether it still holds every
// key (isHeld, which resumes a cluster session whose node was lost) and reads its token
// again; the commit event says whether the session had to be resumed (the connection was
// down before the call), what the server answered and the token after. An exception that
// says the locks are gone (PkLockLostException) is logged as `lost`, one that says the
// servers cannot be reached or cannot decide now (or a deadlock) as `fail`; the worker
// then carries on.

declare(strict_types=1);

[, $servers, $logFile, $seed, $keyList, $wait, $until, $ioTimeout] = $argv;
$keys = explode(',', $keyList);
$wait = (float) $wait;
$until = (int) $until;
mt_srand((int) $seed);

// Plain files are written without a PHP buffer: each line is one write(), so a SIGKILL
// loses at most the event being written, never half a line.
$log = fopen($logFile, 'ab');
$record = static function (array $event) use ($log): void {
    fwrite($log, json_encode($event) . "\n");
};
// Runs one pklock call: 'ok', or on a lost session or an unreachable cluster 'lost' or
// 'fail', logged with where it happened. Any other exception ends the worker: the driver
// reports its exit code.
$attempt = static function (string $during, callable $call) use ($record): string {
    try {
        $call();
        return 'ok';
    } catch (PkLockLostException $e) {
        $outcome = 'lost';
    } catch (PkLockConnectionException | PkLockUnavailableException | PkLockDeadlockException $e) {
        // A deadlock too: a lock given up on during a fault may be granted later, and
        // held until its release is through, while this worker waits for another key.
        $outcome = 'fail';
    }
    $record(['e' => $outcome, 't' => hrtime(true), 'during' => $during, 'why' => get_class($e) . ': ' . $e->getMessage()]);
    return $outcome;
};

// Random node order: the workers, all on this host, spread over a cluster's nodes, so their
// handoffs cross nodes (by default every process of a host takes the same node).
$client = new PkLockClient($servers, null, ['io_timeout' => (float) $ioTimeout, 'node_order' => 'random']);
$record(['e' => 'start', 't' => hrtime(true), 'pid' => getmypid()]);
while (hrtime(true) < $until) {
    // Mostly exclusive single keys; some shared; some all-or-nothing pairs; a few
    // try-locks (wait 0).
    $dice = mt_rand(0, 99);
    $shared = $dice >= 60 && $dice < 85;
    $want = $dice >= 85 ? 2 : 1;
    $picked = (array) array_rand(array_flip($keys), $want);
    $locked = count($picked) === 1 ? $picked[0] : $picked;
    $thisWait = mt_rand(0, 9) === 0 ? 0.0 : $wait;
    $record(['e' => 'req', 't' => hrtime(true), 'keys' => $picked, 'shared' => $shared, 'wait' => $thisWait]);
    $granted = false;
    $outcome = $attempt('lock', function () use ($client, $locked, $thisWait, $shared, &$granted): void {
        $granted = $client->lock($locked, $thisWait, $shared);
    });
    if ($outcome !== 'ok') {
        // A job backs off while the cluster cannot decide, rather than spin.
        usleep($outcome === 'fail' ? mt_rand(50_000, 200_000) : 0);
        continue;
    }
    $t = hrtime(true);
    if (!$granted) {
        $record(['e' => 'timeout', 't' => $t]);
        continue;
    }
    $record(['e' => 'grant', 't' => $t, 'token' => $client->token($picked[0])]);
    // Now and then a hold longer than the wait, so that waiters time out behind a busy key
    // (the checker must accept those) and a killed long holder must hand over at once.
    usleep(mt_rand(0, 99) === 0 ? mt_rand((int) ($wait * 1.2e6), (int) ($wait * 2.5e6)) : mt_rand(0, 20_000));

    // isConnected() does no I/O: false means the next call resumes the session elsewhere.
    $resumes = !$client->isConnected();
    $asked = hrtime(true);
    $committed = $attempt('commit', function () use ($client, $picked, $resumes, $asked, $record): void {
        $held = array_map(static fn (string $key): bool => $client->isHeld($key), $picked);
        $record(['e' => 'commit', 't' => hrtime(true), 'asked' => $asked, 'held' => $held, 'resumed' => $resumes, 'token' => $client->token($picked[0])]);
    });
    if ($committed === 'lost') {
        // There is nothing left to release.
        continue;
    }
    $record(['e' => 'release', 't' => hrtime(true)]);
    $attempt('unlock', fn () => $client->unlock($locked));
    usleep(mt_rand(0, 5_000));
}
// A call that reads the last unlock's reply: a refused unlock throws here, not unseen.
$attempt('end', fn () => $client->rpc('ping'));
$record(['e' => 'end', 't' => hrtime(true)]);
