<?php

// Node loss in a lockd cluster, seen from pklock.so. Starts three lockd nodes of its own (on
// the etcd cluster in PKLOCK_BENCH_ETCD, a fresh prefix, --session-ttl --ttl) and measures:
// - resume: a holder process (given the node list) holds a lock; the node serving it is
//   SIGKILLed; the holder is then told to call isHeld(), which finds the connection lost,
//   resumes the session on another node and asks it. Measured from just before the kill
//   to isHeld() returning true (with the same token; anything else fails the run).
// - release: a holder holds the lock, a waiter blocks on it through the other nodes; the
//   holder's node is SIGKILLed, then the holder process (so nobody resumes its session).
//   Measured from just before the node's kill to the waiter's grant: the session's TTL
//   plus what etcd and the nodes take to notice that it ran out. The kill comes at a
//   random moment of the node's 1 s lease renewal cycle (how long ago the node last renewed
//   is most of the spread); a sample during which etcd elected a leader is counted in
//   leader_changes: a new etcd leader gives every lease its full TTL again.
// After each sample the killed node is started again on its port.
//
//   bench/php/node-loss.php [--resume-samples=20] [--release-samples=3] [--ttl=3]
//
// Needs PKLOCK_BENCH_ETCD (etcd client host:port list) and LOCKD_BIN, which
// bench/cluster/run sets. Prints JSON lines.

declare(strict_types=1);

use PkLock\Testing\LockdServer;

require_once __DIR__ . '/lib.php';
require_once dirname(__DIR__, 2) . '/php-lib/src/Testing/LockdServer.php';

const KEY = 'bench:node-loss';
const NODES = 3;

match ($argv[1] ?? '') {
    'holder' => holder($argv[2]),
    'waiter' => waiter($argv[2]),
    default => main(options($argv, ['resume-samples' => 20, 'release-samples' => 3, 'ttl' => 3])),
};

function main(array $options): void
{
    $nodes = [];
    for ($i = 0; $i < NODES; $i++) {
        $nodes["n$i"] = LockdServer::start([
            '--cluster', 'etcd://' . env('PKLOCK_BENCH_ETCD'), '--cluster-prefix', '/pklock/bench-node-loss-' . getmypid(),
            '--node-id', "n$i", '--session-ttl', $options['ttl'], '--log-level', 'warn',
        ]);
    }
    $list = fn (array $names): string => implode(',', array_map(fn (string $n): string => '127.0.0.1:' . $nodes[$n]->port(), $names));

    $resumes = [];
    for ($i = 0; $i < $options['resume-samples']; $i++) {
        $holder = new Child('node-loss.php', ['holder', $list(array_keys($nodes))]);
        $served = $holder->receive(); // the name of the node it holds the lock through
        $killed = hrtime(true);
        $nodes[$served]->kill();
        $holder->send('check');
        $resumes[] = ((int) $holder->receive() - $killed) / 1e3;
        $holder->close();
        $nodes[$served]->restart();
    }
    report('resume', "holder's node SIGKILLed → holder served again by another node", $resumes, $options['ttl']);

    $releases = [];
    $leaderChanges = 0;
    for ($i = 0; $i < $options['release-samples']; $i++) {
        $holder = new Child('node-loss.php', ['holder', $list(array_keys($nodes))]);
        $served = $holder->receive();
        $others = $list(array_values(array_diff(array_keys($nodes), [$served])));
        $waiter = new Child('node-loss.php', ['waiter', $others]);
        awaitWaiter(new PkLockClient($others));
        // Killed a fixed delay into each sample, the nodes would die at the same moment of
        // their 1 s renewal cycle every time: a node restarts a fixed delay after the
        // previous release, and releases fall on etcd's 0.5 s expiry checks, so the
        // renewals keep step with this loop (13 of 15 samples came out at 3.9 s or 4.4 s at
        // TTL 3 s). A random wait of up to a renewal period spreads the kills over the cycle.
        usleep(random_int(0, 999_999));
        $term = etcdTerm();
        $killed = hrtime(true);
        $nodes[$served]->kill();
        $holder->kill();
        $releases[] = ((int) $waiter->receive() - $killed) / 1e3;
        if (etcdTerm() !== $term) {
            $leaderChanges++;
            fprintf(STDERR, "node-loss: etcd elected a leader during release sample %d (%.0f µs)\n", $i, end($releases));
        }
        $waiter->close();
        $holder->close();
        $nodes[$served]->restart();
    }
    report('release', "holder's node and holder SIGKILLed → its lock released (TTL {$options['ttl']} s)", $releases, $options['ttl'], ['leader_changes' => $leaderChanges]);
}

/** etcd's Raft term, which grows with each leader election. */
function etcdTerm(): int
{
    $terms = [0];
    foreach (explode(',', env('PKLOCK_BENCH_ETCD')) as $member) {
        $curl = curl_init("http://$member/v3/maintenance/status");
        curl_setopt_array($curl, [CURLOPT_POST => true, CURLOPT_POSTFIELDS => '{}', CURLOPT_RETURNTRANSFER => true, CURLOPT_TIMEOUT => 2]);
        $reply = curl_exec($curl);
        $terms[] = is_string($reply) ? (int) (json_decode($reply, true)['raftTerm'] ?? 0) : 0;
    }
    return max($terms);
}

/** Blocks until the cluster shows the waiter queued, so the kill always has someone waiting. */
function awaitWaiter(PkLockClient $control): void
{
    $deadline = microtime(true) + 10;
    while ($control->rpc('stat', [])['waiters'] < 1) {
        microtime(true) < $deadline or throw new RuntimeException('the waiter never showed up in stat');
        usleep(1000);
    }
}

function report(string $metric, string $case, array $samples, int $ttl, array $extra = []): void
{
    sort($samples);
    $each = implode(' ', array_map(fn (float $us): string => sprintf('%.2f', $us / 1e6), $samples));
    fprintf(STDERR, "node-loss: %s, %d samples, median %.0f µs (each, s: %s)\n", $metric, count($samples), percentile($samples, 50), $each);
    foreach ([50, 99] as $p) {
        result('node-loss', 'pklock', $case, "{$metric}_p$p", percentile($samples, $p), 'µs', ['samples' => count($samples), 'ttl_ms' => $ttl * 1000] + $extra);
    }
}

/**
 * A child: takes the lock through the node list, says which node serves it, then for each
 * line asks isHeld() (which resumes on another node if this one was lost) and answers the
 * hrtime it returned at.
 */
function holder(string $nodeList): void
{
    $client = new PkLockClient($nodeList);
    $client->lock(KEY, null) or throw new RuntimeException('the holder got no grant');
    $token = $client->token(KEY);
    echo $client->rpc('stat', [])['cluster']['name'], "\n";
    while (fgets(STDIN) !== false) {
        $held = $client->isHeld(KEY);
        $servedAt = hrtime(true);
        if (!$held || $client->token(KEY) !== $token) {
            throw new RuntimeException('the lock did not survive the loss of its node');
        }
        echo "$servedAt\n";
    }
}

/** A child: blocks on the lock, answers the hrtime of its grant, releases, waits to be closed. */
function waiter(string $nodeList): void
{
    $client = new PkLockClient($nodeList);
    $client->lock(KEY, null) or throw new RuntimeException('the waiter got no grant');
    echo hrtime(true), "\n";
    $client->unlock(KEY);
    fgets(STDIN);
}
