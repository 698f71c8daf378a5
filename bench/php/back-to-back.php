<?php

// One PHP process, each peer in long back-to-back loops of lock+unlock pairs (its own
// key, nobody waits), alternating peers per round: the other way to compare one process,
// next to pairs.php's 0.1 s time slices. On a VM whose idle CPUs are slow to wake, the
// two can disagree; BENCHMARKS.md reports both. Prints a table to stderr and result
// lines to stdout (bench/php/run collects them).
//
//   bench/php/back-to-back.php [--pairs=20000] [--rounds=3] [--peers=pklock,redis,memcached,postgres]

declare(strict_types=1);

require __DIR__ . '/lib.php';

$options = options($argv, ['pairs' => 20000, 'rounds' => 3, 'peers' => 'pklock,redis,memcached,postgres']);
$peers = explode(',', $options['peers']);
$lockers = array_combine($peers, array_map(fn (string $peer) => locker($peer), $peers));
$micros = array_fill_keys($peers, []);
for ($round = 0; $round < $options['rounds']; $round++) {
    foreach ($lockers as $peer => $locker) {
        $key = "back-to-back:$peer:" . getmypid();
        $started = hrtime(true);
        for ($i = 0; $i < $options['pairs']; $i++) {
            $locker->acquire($key);
            $locker->release($key);
        }
        $micros[$peer][] = (hrtime(true) - $started) / $options['pairs'] / 1000;
    }
}
$pklock = $micros['pklock'] ?? null;
fwrite(STDERR, sprintf("%-10s %12s %14s\n", 'peer', 'µs per pair', 'pklock ahead'));
foreach ($micros as $peer => $rounds) {
    sort($rounds);
    $median = $rounds[intdiv(count($rounds), 2)];
    $ahead = $pklock === null ? null : array_map(fn (float $mine, float $theirs) => $mine / $theirs, $micros[$peer], $pklock);
    if ($ahead !== null) {
        sort($ahead);
    }
    fwrite(STDERR, sprintf("%-10s %12.1f %14s\n", $peer, $median, $ahead === null ? '' : sprintf('%.2fx', $ahead[intdiv(count($ahead), 2)])));
    result('back_to_back', $peer, '1 process, back-to-back loops', 'pair_micros', $median, 'µs', ['rounds' => $rounds]);
}
