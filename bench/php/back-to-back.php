<?php

// One PHP process, each peer in long back-to-back loops of lock+unlock pairs (its own
// key, nobody waits), alternating peers per round, plus pklock's rpc('ping') round trips:
// the other way to compare one process, next to pairs.php's 0.1 s time slices. On a VM
// whose idle CPUs are slow to wake, the two can disagree; BENCHMARKS.md reports both.
// Also the client's own CPU time (user + system, getrusage) per pair: what the PHP
// process pays for the extension and its syscalls, whatever the server does. Prints a
// table to stderr and result lines to stdout (bench/php/run collects them).
//
//   bench/php/back-to-back.php [--pairs=20000] [--rounds=3] [--peers=pklock,redis,memcached,postgres]

declare(strict_types=1);

require __DIR__ . '/lib.php';

$options = options($argv, ['pairs' => 20000, 'rounds' => 3, 'peers' => 'pklock,redis,memcached,postgres']);
$peers = explode(',', $options['peers']);
$operations = array_combine($peers, array_map(function (string $peer): Closure {
    $locker = locker($peer);
    return function (string $key) use ($locker): void {
        $locker->acquire($key);
        $locker->release($key);
    };
}, $peers));
if (in_array('pklock', $peers, true)) {
    $client = new PkLockClient(...address('PKLOCK_BENCH_LOCKD'));
    $operations = ['ping' => fn () => $client->rpc('ping')] + $operations;
}

/** User + system CPU seconds this process has used. */
function cpuSeconds(): float
{
    $usage = getrusage();
    return $usage['ru_utime.tv_sec'] + $usage['ru_stime.tv_sec'] + ($usage['ru_utime.tv_usec'] + $usage['ru_stime.tv_usec']) / 1e6;
}

$micros = $cpuMicros = array_fill_keys(array_keys($operations), []);
for ($round = 0; $round < $options['rounds']; $round++) {
    foreach ($operations as $name => $operation) {
        $key = "back-to-back:$name:" . getmypid();
        $cpu = cpuSeconds();
        $started = hrtime(true);
        for ($i = 0; $i < $options['pairs']; $i++) {
            $operation($key);
        }
        $micros[$name][] = (hrtime(true) - $started) / $options['pairs'] / 1000;
        $cpuMicros[$name][] = (cpuSeconds() - $cpu) / $options['pairs'] * 1e6;
    }
}

function median(array $values): float
{
    sort($values);
    return $values[intdiv(count($values), 2)];
}

$pklock = $micros['pklock'] ?? null;
fwrite(STDERR, sprintf("%-10s %12s %14s %18s\n", 'peer', 'µs per pair', 'pklock ahead', 'client CPU µs/pair'));
foreach ($micros as $name => $rounds) {
    $ahead = $pklock === null || $name === 'ping' ? null : median(array_map(fn (float $mine, float $theirs) => $mine / $theirs, $rounds, $pklock));
    fwrite(STDERR, sprintf("%-10s %12.1f %14s %18.1f\n", $name, median($rounds), $ahead === null ? '' : sprintf('%.2fx', $ahead), median($cpuMicros[$name])));
    $peer = $name === 'ping' ? 'pklock' : $name;
    $what = $name === 'ping' ? 'ping' : 'pair';
    result('back_to_back', $peer, '1 process, back-to-back loops', "{$what}_micros", median($rounds), 'µs', ['rounds' => $rounds]);
    result('back_to_back', $peer, '1 process, back-to-back loops', "client_cpu_per_{$what}", median($cpuMicros[$name]), 'µs', ['rounds' => $cpuMicros[$name]]);
}
