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
// Against a lockd cluster (bench/cluster/run) the peers are etcd's lock API and pklock.so in
// node orders: pklock (the default, one node for this host), pklock-random, pklock-hosts.
//
// --seconds is the whole run per process count (shared by the peers). Needs the servers
// bench/php/run starts (it sets their addresses, and their pids in PKLOCK_BENCH_SERVER_PIDS:
// then each server's CPU time per pair is reported too, from the slices of its peer).
// Prints JSON lines.

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
    [$slices, $serverCpu] = run($operations, $processes, $options['slice'], $cycles * count($operations));
    $perCycle = $cycles / $options['rounds'];
    foreach ($operations as $i => $operation) {
        $ofOperation = fn (array $perSlice) => array_map(fn (int $cycle) => $perSlice[$cycle * count($operations) + $i], range(0, $cycles - 1));
        $counts = $ofOperation($slices);
        $rounds = array_map(fn (array $round) => array_sum($round) / ($perCycle * $options['slice']), array_chunk($counts, $perCycle));
        $rate = array_sum($counts) / ($cycles * $options['slice']);
        $ping = $operation === 'ping';
        $peer = $ping ? 'pklock' : $operation;
        fprintf(STDERR, "pairs: %s, %s: %.0f/s\n", $case, $operation, $rate);
        result('pairs', $peer, $case, $ping ? 'pings_per_sec' : 'pairs_per_sec', $rate, $ping ? 'pings/s' : 'pairs/s', ['rounds' => $rounds]);
        if (isset($serverCpu[$peer]) && array_sum($counts) > 0) {
            $micros = array_sum($ofOperation($serverCpu[$peer])) / array_sum($counts) / 1000;
            result('pairs', $peer, $case, $ping ? 'server_cpu_per_ping' : 'server_cpu_per_pair', $micros, 'µs');
        }
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
    $servers = serverTasks();
    // Far enough ahead that every worker has the start time before it comes.
    $start = hrtime(true) + 50_000_000;
    $total = array_fill(0, $slices, 0);
    foreach ($workers as $worker) {
        $worker->send("$start $slices");
    }
    $serverCpu = serverCpuPerSlice($servers, $start, $slice, $slices);
    foreach ($workers as $worker) {
        foreach (json_decode($worker->receive(), flags: JSON_THROW_ON_ERROR) as $i => $count) {
            $total[$i] += $count;
        }
        $worker->close();
    }
    return [$total, $serverCpu];
}

/**
 * The servers to measure: their pids come from PKLOCK_BENCH_SERVER_PIDS ("pklock=PID,
 * redis=PID,..."; without it, nothing is measured); for each, the schedstat files of every
 * thread of it and its child processes (as PostgreSQL's backends) as they are now.
 *
 * @return array<string, list<string>>
 */
function serverTasks(): array
{
    $tasks = [];
    foreach (array_filter(explode(',', (string) getenv('PKLOCK_BENCH_SERVER_PIDS'))) as $entry) {
        [$peer, $pid] = explode('=', $entry, 2);
        $tasks[$peer] = taskFiles((int) $pid);
    }
    return $tasks;
}

/**
 * The CPU time (ns) of each server of serverTasks() in each slice, read at the slice
 * boundaries from /proc/<task>/schedstat.
 *
 * @return array<string, list<int>>
 */
function serverCpuPerSlice(array $tasks, int $start, float $slice, int $slices): array
{
    $read = fn () => array_map(fn (array $files) => array_sum(array_map(fn (string $f) => (int) @file_get_contents($f), $files)), $tasks);
    $perSlice = array_fill_keys(array_keys($tasks), []);
    if ($tasks === []) {
        return $perSlice;
    }
    $sliceNs = (int) ($slice * 1e9);
    time_nanosleep(0, max(0, $start - hrtime(true)));
    $before = $read();
    for ($i = 1; $i <= $slices; $i++) {
        $wait = $start + $i * $sliceNs - hrtime(true);
        if ($wait > 0) {
            time_nanosleep(intdiv($wait, 1_000_000_000), $wait % 1_000_000_000);
        }
        $now = $read();
        foreach ($now as $peer => $ns) {
            $perSlice[$peer][] = $ns - $before[$peer];
        }
        $before = $now;
    }
    return $perSlice;
}

/** The schedstat files of every thread of process $pid and of its descendants. */
function taskFiles(int $pid): array
{
    $children = [];
    foreach (glob('/proc/[0-9]*/stat') as $stat) {
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        $line = (string) @file_get_contents($stat);
        $fields = explode(' ', substr($line, (int) strrpos($line, ')') + 2));
        if (isset($fields[1]) && (int) $fields[1] === $pid) {
            $children[] = (int) basename(dirname($stat));
        }
    }
    $files = glob("/proc/$pid/task/*/schedstat") ?: [];
    foreach ($children as $child) {
        $files = [...$files, ...taskFiles($child)];
    }
    return $files;
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
            $locker = locker($operation, worker: $index);
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
