<?php

// Speed of PkLockClient as a ratio, not a time: N lock+unlock pairs against N rpc('ping')
// round trips on the same connection, in the same run. unlock() is pipelined (its reply is
// read during the next call), so a pair should cost little more than one round trip.
//
// Usage: php -d extension=modules/pklock.so bench/php/pair-vs-ping.php [iterations] [host:port]
// Without host:port it starts target/release/lockd (or LOCKD_BIN) on a free port.

declare(strict_types=1);

require_once dirname(__DIR__, 2) . '/php-lib/src/Testing/LockdServer.php';

use PkLock\Testing\LockdServer;

const ROUNDS = 5;

$iterations = (int) ($argv[1] ?? 20000);
if ($iterations < 1) {
    fwrite(STDERR, "usage: {$argv[0]} [iterations] [host:port]\n");
    exit(2);
}
if (isset($argv[2])) {
    [$host, $port] = explode(':', $argv[2], 2);
    $server = null;
} else {
    if (getenv('LOCKD_BIN') === false && is_file(dirname(__DIR__, 2) . '/target/release/lockd')) {
        putenv('LOCKD_BIN=' . dirname(__DIR__, 2) . '/target/release/lockd');
    }
    $server = LockdServer::start();
    [$host, $port] = [$server->host(), $server->port()];
}

$client = new PkLockClient($host, (int) $port);

/** Seconds taken by $iterations calls of $operation. */
function timeIt(int $iterations, callable $operation): float
{
    $start = hrtime(true);
    for ($i = 0; $i < $iterations; $i++) {
        $operation();
    }
    return (hrtime(true) - $start) / 1e9;
}

$ping = fn () => $client->rpc('ping');
$pair = function () use ($client): void {
    $client->lock('bench-pair', 5.0);
    $client->unlock('bench-pair');
};
timeIt(1000, $ping); // warm up: connect, caches
timeIt(1000, $pair);

// Interleave the two so that machine noise hits both alike; report the median ratio.
$ratios = [];
for ($round = 1; $round <= ROUNDS; $round++) {
    $pings = timeIt($iterations, $ping);
    $pairs = timeIt($iterations, $pair);
    $ratios[] = $pairs / $pings;
    printf("round %d: %d pings %.3f s, %d lock+unlock pairs %.3f s, ratio %.2f\n", $round, $iterations, $pings, $iterations, $pairs, $pairs / $pings);
}
sort($ratios);
printf("median ratio (pair / ping): %.2f\n", $ratios[intdiv(ROUNDS, 2)]);
$server?->stop();
