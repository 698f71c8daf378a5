<?php

// Prints the PHP comparison's tables (BENCHMARKS.md) and its targets, met or missed, from
// the JSON lines pairs.php, handoff.php and death.php wrote (or, for the cluster benchmarks
// of bench/cluster/run, pairs.php against etcd and node-loss.php). Ratios of pairs/s are also
// given per round (min–max), which shows how noisy the run was.
//
//   php bench/php/report.php bench/results/php.jsonl

declare(strict_types=1);

$records = [];
foreach (file($argv[1] ?? 'bench/results/php.jsonl', FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) as $line) {
    $r = json_decode($line, true, flags: JSON_THROW_ON_ERROR);
    $records["{$r['part']}/{$r['peer']}/{$r['metric']}/{$r['case']}"] = $r;
}

function find(string $part, string $peer, string $metric, ?string $case = null): ?array
{
    global $records;
    foreach ($records as $r) {
        if ($r['part'] === $part && $r['peer'] === $peer && $r['metric'] === $metric && ($case === null || $r['case'] === $case)) {
            return $r;
        }
    }
    return null;
}

function number(float $v): string
{
    return $v >= 100 ? number_format($v, 0, '.', '') : sprintf('%.3g', $v);
}

/** "a / b" for two pairs/s records, as "median ratio (min–max over rounds)"; null if one is missing. */
function ratio(?array $a, ?array $b): ?string
{
    if ($a === null || $b === null) {
        return null;
    }
    $perRound = array_map(fn ($x, $y) => $x / $y, $a['rounds'], $b['rounds']);
    return sprintf('%.2f× (%.2f–%.2f)', $a['value'] / $b['value'], min($perRound), max($perRound));
}

$cases = array_values(array_unique(array_map(fn ($r) => $r['case'], array_filter($records, fn ($r) => $r['part'] === 'pairs'))));
$peers = array_values(array_unique(array_map(fn ($r) => $r['peer'], array_filter($records, fn ($r) => $r['metric'] === 'pairs_per_sec'))));

echo "| lock+unlock pairs/s, each process its own key | ", implode(' | ', $cases), " | pklock.so ahead, ", implode(' | pklock.so ahead, ', $cases), " |\n";
echo '|---|', str_repeat('---:|', 2 * count($cases)), "\n";
foreach ($peers as $peer) {
    $cells = $ratios = [];
    foreach ($cases as $case) {
        $r = find('pairs', $peer, 'pairs_per_sec', $case);
        $cells[] = $r === null ? '' : number($r['value']);
        $ratios[] = $peer === 'pklock' ? '' : (ratio(find('pairs', 'pklock', 'pairs_per_sec', $case), $r) ?? '');
    }
    echo "| $peer | ", implode(' | ', $cells), ' | ', implode(' | ', $ratios), " |\n";
}
$pings = array_map(fn ($case) => find('pairs', 'pklock', 'pings_per_sec', $case), $cases);
echo "| pklock rpc('ping'), round trips/s | ", implode(' | ', array_map(fn ($r) => $r === null ? '' : number($r['value']), $pings)), str_repeat(' | ', count($cases)), " |\n";
// The servers' CPU per pair, from the same run (pairs.php, PKLOCK_BENCH_SERVER_PIDS).
foreach ([...array_map(fn ($p) => [$p, 'server_cpu_per_pair', "$p: server CPU µs per pair"], $peers), ['pklock', 'server_cpu_per_ping', "pklock rpc('ping'): server CPU µs per ping"]] as [$peer, $metric, $label]) {
    $cpu = array_map(fn ($case) => find('pairs', $peer, $metric, $case), $cases);
    if (array_filter($cpu) !== []) {
        echo "| $label | ", implode(' | ', array_map(fn ($r) => $r === null ? '' : number($r['value']), $cpu)), str_repeat(' | ', count($cases)), " |\n";
    }
}

$b2bCases = array_values(array_unique(array_map(fn ($r) => $r['case'], array_filter($records, fn ($r) => $r['part'] === 'back_to_back'))));
if ($b2bCases !== []) {
    $short = fn (string $case) => trim(str_replace('1 process, back-to-back loops', '', $case), ', ') ?: 'idle';
    echo "\n| one process, back-to-back loops | µs per pair, ", implode(' | µs per pair, ', array_map($short, $b2bCases)),
        " | client CPU µs per pair, ", implode(' | client CPU µs per pair, ', array_map($short, $b2bCases)), " |\n";
    echo '|---|', str_repeat('---:|', 2 * count($b2bCases)), "\n";
    $rows = array_values(array_unique(array_map(fn ($r) => $r['peer'] . '/' . (str_starts_with($r['metric'], 'ping') ? 'ping' : 'pair'),
        array_filter($records, fn ($r) => $r['part'] === 'back_to_back'))));
    foreach ($rows as $row) {
        [$peer, $what] = explode('/', $row);
        $cells = [];
        foreach (["{$what}_micros", "client_cpu_per_$what"] as $metric) {
            foreach ($b2bCases as $case) {
                $r = find('back_to_back', $peer, $metric, $case);
                $cells[] = $r === null ? '' : number($r['value']);
            }
        }
        echo '| ', $what === 'ping' ? "pklock rpc('ping')" : $peer, ' | ', implode(' | ', $cells), " |\n";
    }
}

$titles = ['handoff' => 'handoff: release → waiter granted', 'death' => 'holder killed → waiter granted', 'node-loss' => 'lockd cluster, node loss'];
foreach ($titles as $part => $title) {
    if (array_filter($records, fn ($r) => $r['part'] === $part) === []) {
        continue;
    }
    echo "\n| $title | p50 | p99 | samples |\n|---|---:|---:|---:|\n";
    foreach ($records as $r) {
        if ($r['part'] === $part && str_ends_with($r['metric'], '_p50')) {
            $p99 = find($part, $r['peer'], str_replace('_p50', '_p99', $r['metric']), $r['case']);
            $label = match (true) {
                $r['metric'] === 'ping_p50' => "{$r['peer']} rpc('ping'), just before each handoff",
                $r['peer'] === 'teardown' => 'a PHP process holding nothing: SIGKILL → reaped (the floor)',
                $part === 'node-loss' => $r['case'],
                ($r['ttl_ms'] ?? 0) > 0 => "{$r['peer']} (expires: TTL {$r['ttl_ms']} ms)",
                default => $r['peer'],
            };
            // A new etcd leader renews every lease in full: such samples say so.
            $elections = ($r['leader_changes'] ?? 0) > 0 ? " ({$r['leader_changes']} during an etcd leader election)" : '';
            printf("| %s | %s µs | %s µs | %d%s |\n", $label, number($r['value']), number($p99['value']), $r['samples'], $elections);
        }
    }
}

// Targets of the issues; a target whose parts did not run is left out. The pairs' targets
// are judged per machine condition (idle, one core busy): cases "1 process[, condition]".
$targets = [];
$conditions = [];
foreach ($cases as $case) {
    if (preg_match('/^(\d+) process(?:es)?(.*)$/', $case, $m)) {
        $conditions[$m[2]][(int) $m[1] === 1 ? 'one' : 'many'] = $case;
    }
}
foreach ($conditions as $suffix => $of) {
    $one = fn (string $peer) => isset($of['one']) ? find('pairs', $peer, 'pairs_per_sec', $of['one']) : null;
    $many = fn (string $peer) => isset($of['many']) ? find('pairs', $peer, 'pairs_per_sec', $of['many']) : null;
    $ping = isset($of['one']) ? find('pairs', 'pklock', 'pings_per_sec', $of['one']) : null;
    if ($ping !== null && $one('pklock') !== null) {
        $perRound = array_map(fn ($pings, $pairs) => $pings / $pairs, $ping['rounds'], $one('pklock')['rounds']);
        $v = $ping['value'] / $one('pklock')['value'];
        $targets[] = ["1 process$suffix: a pair ≤ 1.2× a ping round trip", sprintf('%.2f× (%.2f–%.2f)', $v, min($perRound), max($perRound)), $v <= 1.2];
    }
    foreach ([['redis', 1.7], ['memcached', 1.0], ['postgres', 1.0]] as [$peer, $min]) {
        if (($r = ratio($one('pklock'), $one($peer))) !== null) {
            $targets[] = ["1 process$suffix: pairs/s ≥ {$min}× $peer", $r, $one('pklock')['value'] >= $min * $one($peer)['value']];
        }
    }
    foreach ([['redis', 2.0], ['memcached', 2.0], ['etcd', 3.0]] as [$peer, $min]) {
        if (($r = ratio($many('pklock'), $many($peer))) !== null) {
            $what = $peer === 'etcd' ? "pairs/s of a lockd cluster ≥ 3× etcd's lock API" : "pairs/s ≥ {$min}× $peer";
            $targets[] = ["{$of['many']}: $what", $r, $many('pklock')['value'] >= $min * $many($peer)['value']];
        }
    }
}
foreach ($b2bCases as $case) {
    $pair = find('back_to_back', 'pklock', 'pair_micros', $case);
    $ping = find('back_to_back', 'pklock', 'ping_micros', $case);
    if ($pair !== null && $ping !== null) {
        $v = $pair['value'] / $ping['value'];
        $targets[] = ["$case: a pair ≤ 1.2× a ping round trip", sprintf('%.2f× (%s vs %s µs)', $v, number($pair['value']), number($ping['value'])), $v <= 1.2];
    }
    $mine = find('back_to_back', 'pklock', 'client_cpu_per_pair', $case);
    $phpredis = find('back_to_back', 'redis', 'client_cpu_per_pair', $case);
    if ($mine !== null && $phpredis !== null) {
        $targets[] = ["$case: pklock.so's CPU per pair ≤ phpredis's", sprintf('%s vs %s µs', number($mine['value']), number($phpredis['value'])), $mine['value'] <= $phpredis['value']];
    }
}
if (($resume = find('node-loss', 'pklock', 'resume_p50')) !== null) {
    $targets[] = ["holder's node killed → holder served again, median ≤ 1 s", sprintf('%.0f ms', $resume['value'] / 1e3), $resume['value'] <= 1e6];
}
if (($release = find('node-loss', 'pklock', 'release_p50')) !== null) {
    $limit = $release['ttl_ms'] * 1e3 + 1e6;
    $targets[] = ['dead node → its sessions released, median ≤ TTL + 1 s', sprintf('%.2f s (TTL %.0f s)', $release['value'] / 1e6, $release['ttl_ms'] / 1e3), $release['value'] <= $limit];
}
$handoff = find('handoff', 'pklock', 'handoff_p50');
$handoffPing = find('handoff', 'pklock', 'ping_p50');
if ($handoff !== null && $handoffPing !== null) {
    $targets[] = ['handoff median ≤ one ping', sprintf('%s µs vs ping %s µs', number($handoff['value']), number($handoffPing['value'])), $handoff['value'] <= $handoffPing['value']];
}
if ($handoff !== null && ($symfony = find('handoff', 'symfony-redis', 'handoff_p50')) !== null) {
    $v = $symfony['value'] / $handoff['value'];
    $targets[] = ['handoff ≥ 50× faster than symfony/lock RedisStore acquire(true)', sprintf('%.0f×', $v), $v >= 50];
}
if (($death = find('death', 'pklock', 'death_p50')) !== null) {
    $targets[] = ['holder dies → waiter granted, median ≤ 5 ms', sprintf('%.2f ms', $death['value'] / 1e3), $death['value'] <= 5000];
}
echo "\n| target | measured (per-round min–max) | |\n|---|---|---|\n";
foreach ($targets as [$target, $measured, $met]) {
    printf("| %s | %s | %s |\n", $target, $measured, $met ? 'met' : '**missed**');
}
