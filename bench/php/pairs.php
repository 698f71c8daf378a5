<?php

// Lock+unlock pairs per second from 1 and from 16 concurrent PHP processes, for every peer
// (pklock.so, the phpredis Redlock recipe, php-memcached, PostgreSQL advisory locks, flock),
// plus pklock's rpc('ping') round trips. Each process locks its own key, so nobody waits:
// this is the cost of a lock that is free.
//
// The peers run side by side: every process connects to all of them and warms up, then all
// processes start together and take turns through the peers in time slices (--slice, 0.1 s)
// whose boundaries come from the shared monotonic clock, so all of them switch peer at the
// same moment and a burst of load on the machine hits every peer alike. A peer's rate is
// its pairs summed over processes and slices, divided by the time its slices lasted. The
// run is also cut into --rounds consecutive parts, rated alone, to show the noise.
//
//   bench/php/pairs.php [--seconds=30] [--slice=0.1] [--rounds=5] [--processes=1,16] [--peers=pklock,redis,...]
//
// --seconds is the whole run per process count (shared by the peers). Needs the servers
// bench/php/run starts (it sets their addresses). Prints JSON lines.

declare(strict_types=1);

require_once __DIR__ . '/lib.php';

const WARMUP_PAIRS = 200;

if (($argv[1] ?? '') === 'worker') {
    worker(explode(',', $argv[2]), (int) $argv[3], (float) $argv[4]);
    exit(0);
}

$options = options($argv, ['seconds' => 30.0, 'slice' => 0.1, 'rounds' => 5, 'processes' => '1,16', 'peers' => 'pklock,redis,memcached,postgres,flock']);
$peers = explode(',', $options['peers']);
$operations = ['ping', ...$peers];
// Whole rounds of whole cycles (one slice per operation), at least one of each.
$cycles = max(1, (int) round($options['seconds'] / $options['slice'] / count($operations) / $options['rounds'])) * $options['rounds'];
foreach (array_map('intval', explode(',', $options['processes'])) as $processes) {
    $case = $processes === 1 ? '1 process' : "$processes processes";
    $slices = run($operations, $processes, $options['slice'], $cycles * count($operations));
    $perCycle = $cycles / $options['rounds'];
    foreach ($operations as $i => $operation) {
        $counts = array_map(fn (int $cycle) => $slices[$cycle * count($operations) + $i], range(0, $cycles - 1));
        $rounds = array_map(fn (array $round) => array_sum($round) / ($perCycle * $options['slice']), array_chunk($counts, $perCycle));
        $rate = array_sum($counts) / ($cycles * $options['slice']);
        fprintf(STDERR, "pairs: %s, %s: %.0f/s\n", $case, $operation, $rate);
        $ping = $operation === 'ping';
        result('pairs', $ping ? 'pklock' : $operation, $case, $ping ? 'pings_per_sec' : 'pairs_per_sec', $rate, $ping ? 'pings/s' : 'pairs/s', ['rounds' => $rounds]);
    }
}

/**
 * Starts $processes workers, starts them together once all are ready, and returns the
 * number of operations done in each slice, summed over the workers.
 *
 * @return list<int>
 */
function run(array $operations, int $processes, float $slice, int $slices): array
{
    $workers = [];
    for ($i = 0; $i < $processes; $i++) {
        $workers[] = new Child('pairs.php', ['worker', implode(',', $operations), (string) $i, (string) $slice]);
    }
    foreach ($workers as $worker) {
        $worker->receive(); // ready: connected to every peer and warmed up
    }
    // Far enough ahead that every worker has the start time before it comes.
    $start = hrtime(true) + 50_000_000;
    $total = array_fill(0, $slices, 0);
    foreach ($workers as $worker) {
        $worker->send("$start $slices");
    }
    foreach ($workers as $worker) {
        foreach (json_decode($worker->receive(), flags: JSON_THROW_ON_ERROR) as $i => $count) {
            $total[$i] += $count;
        }
        $worker->close();
    }
    return $total;
}

/**
 * A child: connects to every peer and warms up, says ready, then from the start time it is
 * sent does the operation of the current slice until the last slice ends; prints the count
 * of operations done in each slice as a JSON list.
 */
function worker(array $operations, int $index, float $slice): void
{
    $key = "bench:pair:$index";
    $once = [];
    foreach ($operations as $operation) {
        if ($operation === 'ping') {
            $client = (new PkLockLocker())->client;
            $once[] = fn () => $client->rpc('ping');
        } else {
            $locker = locker($operation);
            $once[] = function () use ($locker, $key): void {
                $locker->acquire($key);
                $locker->release($key);
            };
        }
    }
    foreach ($once as $operation) {
        for ($i = 0; $i < WARMUP_PAIRS; $i++) {
            $operation();
        }
    }
    echo "ready\n";
    [$start, $slices] = array_map('intval', explode(' ', fgets(STDIN)));
    $sliceNs = (int) ($slice * 1e9);
    $counts = array_fill(0, $slices, 0);
    time_nanosleep(0, max(0, $start - hrtime(true)));
    while (($i = intdiv(hrtime(true) - $start, $sliceNs)) < $slices) {
        $once[$i % count($once)]();
        $counts[$i]++;
    }
    echo json_encode($counts), "\n";
}
