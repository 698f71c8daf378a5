<?php

// Judges a chaos run's merged history (the workers' logs, the driver's kill times and the
// target's fault windows) against the promises of a lock: no two exclusive holds of a key
// overlap, no shared hold overlaps an exclusive one, tokens are unique and follow the order
// of conflicting grants on each key, a held multi-key lock is held on every key, a session
// resumed on another node keeps its locks and tokens, and every request progressed
// (granted, or timed out while its keys were busy). Logged holds lie inside the server's
// real ones (workers log a grant after it arrives and a release before sending it; a
// killed holder's hold is cut at the moment the driver decided to kill it), so every
// violation reported here is a real one.
//
// Server faults (a cluster node killed or frozen, etcd killed) may legitimately cost a
// client its session, and with it its locks, once the session TTL runs out: a worker
// learns it from PkLockLostException (logged `lost`) or from isHeld() saying false. Such
// losses, failures and delays are accepted inside the target's fault windows only. An
// overlap with a hold whose holder lost it (or was killed in a fault window, before it
// could learn) is counted as `overlaps_lost`, not as a violation, unless the server
// confirmed that hold (isHeld, the worker's commit) while the rival surely held the key:
// that is a violation whatever came after.

declare(strict_types=1);

namespace PkLock\Tests\Chaos;

final class HistoryChecker
{
    private const NS = 1_000_000_000;

    /** Most violations listed per kind: one is enough to fail, the rest is noise. */
    private const MAX_LISTED = 5;

    /** @var list<string> */
    private array $violations = [];
    /** @var array<string, int> */
    private array $counts = [];
    /** @var array<string, int> */
    private array $stats = [];
    /**
     * Every hold: keys, start, end, shared, token, worker; lost (its holder learned it was
     * gone), killed (its holder was killed holding it), commit ([asked, answered] of the
     * isHeld that confirmed it, or null), excused (in an overlap forgiven as lost).
     *
     * @var list<array<string, mixed>>
     */
    private array $holds = [];
    /** @var list<array{0: int, 1: int}> */
    private array $disturbed = [];

    /**
     * @param float $freeGapSeconds a timeout is a progress failure when, during its wait, every
     *        key it could have been waiting behind was free this long; below that, a gap is
     *        the time a grant takes to reach its worker's log (more on a loaded machine)
     * @param float $lateSeconds how much longer than its wait a lock() may take to return
     *        (the reply's way back, a busy machine) before it counts as stuck
     */
    public function __construct(private float $freeGapSeconds = 1.0, private float $lateSeconds = 5.0)
    {
    }

    /**
     * @param array<string, list<array<string, mixed>>> $histories worker name => its events, in order
     * @param array<string, int> $killedAt worker name => hrtime when the driver decided to SIGKILL it
     * @param list<array{0: int, 1: int}> $disturbed hrtime intervals in which server faults
     *        may have made requests fail, come late or lose their locks (ChaosTarget::disturbed)
     * @return list<string> the violations found (empty: the history keeps every promise)
     */
    public function check(array $histories, array $killedAt, array $disturbed = []): array
    {
        $this->violations = [];
        $this->counts = [];
        $this->holds = [];
        $this->disturbed = $disturbed;
        $this->stats = [
            'workers' => count($histories), 'kills' => count($killedAt), 'requests' => 0, 'grants' => 0, 'timeouts' => 0,
            'timeouts_checked' => 0, 'killed_holding' => 0, 'killed_waiting' => 0, 'commits' => 0, 'commits_after_resume' => 0,
            'losses' => 0, 'failures' => 0, 'overlaps_lost' => 0,
        ];

        $requests = [];  // [keys, start, end] of every multi-key request, for timeouts
        $timeouts = [];  // [keys, req, t, wait, worker]
        $tokens = [];    // token => worker, for uniqueness
        foreach ($histories as $worker => $events) {
            $this->readWorker((string) $worker, $events, $killedAt[$worker] ?? null, $requests, $timeouts, $tokens);
        }
        $byKey = [];
        foreach ($this->holds as $id => $hold) {
            foreach ($hold['keys'] as $key) {
                $byKey[$key][] = $id;
            }
        }
        foreach ($byKey as $key => $ids) {
            usort($ids, fn (int $a, int $b): int => $this->holds[$a]['start'] <=> $this->holds[$b]['start']);
            $byKey[$key] = $ids;
            $this->checkOverlaps((string) $key, $ids);
        }
        foreach ($byKey as $key => $ids) {
            $this->checkTokenOrder((string) $key, $ids);
        }
        foreach ($timeouts as $timeout) {
            $this->checkTimeout($timeout, $byKey, $requests);
        }
        return $this->violations;
    }

    /** @return array<string, int> what the last check saw: workers, kills, requests, grants, timeouts, ... */
    public function stats(): array
    {
        return $this->stats;
    }

    private function readWorker(string $worker, array $events, ?int $killedAt, array &$requests, array &$timeouts, array &$tokens): void
    {
        $pending = null;   // the request lock() is waiting on
        $open = null;      // the id of the hold not released yet
        $lastHold = null;  // the id of the worker's latest hold
        $ended = false;
        $last = null;
        foreach ($events as $i => $event) {
            $t = $event['t'] ?? null;
            if (!is_int($t) || ($last !== null && $t < $last)) {
                $this->violation('log', "{$worker}: event {$i} has no time or goes back in time: " . json_encode($event));
                return;
            }
            $last = $t;
            $kind = $event['e'] ?? null;
            if ($pending !== null && in_array($kind, ['grant', 'timeout', 'lost', 'fail'], true)) {
                // The lock() call returned, one way or another.
                if ($t - $pending['t'] > ($pending['wait'] + $this->lateSeconds) * self::NS && !$this->inFault($pending['t'], $t)) {
                    $this->violation('progress', sprintf('%s: lock(%s, wait %.1f s) returned only after %.2f s', $worker, implode('+', $pending['keys']), $pending['wait'], ($t - $pending['t']) / self::NS));
                }
                if (count($pending['keys']) > 1) {
                    $requests[] = [$pending['keys'], $pending['t'], $t];
                }
            }
            switch ($kind) {
                case 'start':
                    break;
                case 'req':
                    if ($pending !== null || $open !== null) {
                        $this->violation('log', "{$worker}: request at event {$i} while another is open");
                        return;
                    }
                    $this->stats['requests']++;
                    $pending = ['keys' => $event['keys'], 'shared' => $event['shared'], 'wait' => (float) $event['wait'], 't' => $t];
                    break;
                case 'grant':
                case 'timeout':
                    if ($pending === null) {
                        $this->violation('log', "{$worker}: {$kind} at event {$i} without a request");
                        return;
                    }
                    if ($kind === 'timeout') {
                        $this->stats['timeouts']++;
                        $timeouts[] = [$pending['keys'], $pending['t'], $t, $pending['wait'], $worker];
                    } else {
                        $this->stats['grants']++;
                        $token = $event['token'] ?? null;
                        if (!is_int($token) || $token <= 0) {
                            $this->violation('token', "{$worker}: grant at {$t} has no token: " . json_encode($token));
                        } elseif (isset($tokens[$token])) {
                            $this->violation('token', "token {$token} granted twice: to {$tokens[$token]} and to {$worker}");
                        } else {
                            $tokens[$token] = $worker;
                        }
                        $open = $lastHold = count($this->holds);
                        $this->holds[] = [
                            'keys' => $pending['keys'], 'shared' => $pending['shared'], 'token' => is_int($token) ? $token : 0,
                            'start' => $t, 'end' => null, 'worker' => $worker, 'lost' => false, 'killed' => false, 'commit' => null, 'excused' => false,
                        ];
                    }
                    $pending = null;
                    break;
                case 'commit':
                    if ($open === null) {
                        $this->violation('log', "{$worker}: commit at event {$i} without a hold");
                        return;
                    }
                    $this->readCommit($worker, $open, $event);
                    break;
                case 'release':
                    if ($open === null) {
                        $this->violation('log', "{$worker}: release at event {$i} without a grant");
                        return;
                    }
                    $this->holds[$open]['end'] = $t;
                    $open = null;
                    break;
                case 'lost':
                    // The session is gone with whatever it held: the open hold, else the last
                    // one (whose release may not have reached the cluster).
                    $this->stats['losses']++;
                    $this->faultOnly('lost', $worker, $event);
                    $pending = null;
                    if ($open !== null) {
                        $this->holds[$open]['end'] = $t;
                        $open = null;
                    }
                    if ($lastHold !== null) {
                        $this->holds[$lastHold]['lost'] = true;
                    }
                    break;
                case 'fail':
                    // The call failed for now; a hold stays held until its release.
                    $this->stats['failures']++;
                    $this->faultOnly('fail', $worker, $event);
                    $pending = null;
                    break;
                case 'end':
                    $ended = true;
                    break;
                default:
                    $this->violation('log', "{$worker}: unknown event " . json_encode($event));
                    return;
            }
        }
        if ($killedAt === null) {
            // A worker that was not killed must have finished its loop: anything else is a
            // lock() that never returned or a crash.
            if (!$ended) {
                $what = $pending !== null ? 'waiting for ' . implode('+', $pending['keys']) : ($open !== null ? 'holding ' . implode('+', $this->holds[$open]['keys']) : 'between locks');
                $this->violation('progress', "{$worker}: was not killed but never finished (last seen {$what})");
            }
            if ($open !== null) {
                $this->holds[$open]['end'] = (int) $last;
            }
            return;
        }
        if ($open !== null) {
            // The hold lasted at least until the driver decided to kill it (and until the
            // worker's last event, should the signal have landed later).
            $this->stats['killed_holding']++;
            $this->holds[$open]['end'] = max($killedAt, (int) $last);
            $this->holds[$open]['killed'] = true;
        } elseif ($pending !== null) {
            $this->stats['killed_waiting']++;
            if (count($pending['keys']) > 1) {
                $requests[] = [$pending['keys'], $pending['t'], max($killedAt, (int) $last)];
            }
        }
    }

    /**
     * The holder asked the server whether it still holds every key (resuming its session
     * first if its node was lost): yes on every key, with the token it was granted, confirms
     * the hold; no on every key is a loss it learned of; anything in between is a
     * multi-key lock held on part of its keys.
     */
    private function readCommit(string $worker, int $id, array $event): void
    {
        $hold = &$this->holds[$id];
        $held = array_values(array_unique($event['held'] ?? []));
        $resumed = ($event['resumed'] ?? false) === true;
        if ($held === [true]) {
            $this->stats['commits']++;
            $this->stats['commits_after_resume'] += $resumed ? 1 : 0;
            $hold['commit'] = [(int) $event['asked'], (int) $event['t']];
            if (($event['token'] ?? null) !== $hold['token']) {
                $this->violation('token', sprintf(
                    '%s: token of %s was %d when granted and %s after %s',
                    $worker, implode('+', $hold['keys']), $hold['token'], json_encode($event['token'] ?? null), $resumed ? 'its session was resumed' : 'a check'
                ));
            }
        } elseif ($held === [false]) {
            $this->stats['losses']++;
            $this->faultOnly('lost', $worker, $event);
            $hold['lost'] = true;
        } else {
            $this->violation('partial', sprintf('%s: lockd says %s holds only part of %s (token %d): %s', $worker, $worker, implode('+', $hold['keys']), $hold['token'], json_encode($event['held'] ?? null)));
        }
    }

    /** A lost lock or a failed call is only acceptable while a server fault may explain it. */
    private function faultOnly(string $what, string $worker, array $event): void
    {
        if (!$this->inFault($event['t'], $event['t'])) {
            $this->violation($what, sprintf('%s: %s during %s outside any server fault: %s', $worker, $what, $event['during'] ?? 'commit', $event['why'] ?? json_encode($event)));
        }
    }

    /** Whether [from, to] meets one of the fault windows. */
    private function inFault(int $from, int $to): bool
    {
        foreach ($this->disturbed as [$start, $end]) {
            if ($start <= $to && $from <= $end) {
                return true;
            }
        }
        return false;
    }

    /**
     * Holds of one key sorted by start: each is compared with every conflicting hold that
     * had not ended when it began (the active ones).
     *
     * @param list<int> $ids
     */
    private function checkOverlaps(string $key, array $ids): void
    {
        $active = [];
        foreach ($ids as $id) {
            $hold = $this->holds[$id];
            $active = array_filter($active, fn (int $other): bool => $this->holds[$other]['end'] > $hold['start']);
            foreach ($active as $other) {
                if (!$hold['shared'] || !$this->holds[$other]['shared']) {
                    $this->judgeOverlap($key, $other, $id);
                }
            }
            $active[] = $id;
        }
    }

    /** `$earlier` began first and had not ended when `$later` began: both held the key. */
    private function judgeOverlap(string $key, int $earlier, int $later): void
    {
        $a = $this->holds[$earlier];
        $b = $this->holds[$later];
        foreach ([[$a, $b], [$b, $a]] as [$confirmed, $rival]) {
            // The server answered the isHeld between `asked` and the answer's log line; if
            // both lie inside the logged hold of a rival that surely held the key (not a
            // doubtful one: that may be a stale grant), it confirmed while the rival held.
            if ($confirmed['commit'] !== null && $rival['start'] < $confirmed['commit'][0] && $confirmed['commit'][1] < $rival['end'] && !$this->forgiven($rival, $rival['start'])) {
                $this->violation('overlap', sprintf(
                    'lockd confirmed %s\'s hold of "%s" (token %d) between %d and %d while %s held it (token %d, %d..%d)',
                    $confirmed['worker'], $key, $confirmed['token'], $confirmed['commit'][0], $confirmed['commit'][1], $rival['worker'], $rival['token'], $rival['start'], $rival['end']
                ));
                return;
            }
        }
        if ($this->forgiven($a, $b['start']) || $this->forgiven($b, $b['start'])) {
            $this->stats['overlaps_lost']++;
            $this->holds[$earlier]['excused'] = $this->holds[$later]['excused'] = true;
            return;
        }
        $this->violation('overlap', sprintf(
            '%s on "%s": %s held it (token %d) %s..%s, %s got it (token %d) at %s, %.3f ms before that ended',
            ($a['shared'] || $b['shared']) ? 'shared/exclusive overlap' : 'exclusive overlap',
            $key, $a['worker'], $a['token'], $a['start'], $a['end'], $b['worker'], $b['token'], $b['start'], ($a['end'] - $b['start']) / 1e6
        ));
    }

    /** A hold whose holder learned it was lost, or was killed in a fault before it could. */
    private function forgiven(array $hold, int $from): bool
    {
        return $hold['lost'] || ($hold['killed'] && $this->inFault($from, $hold['end']));
    }

    /**
     * An exclusive hold conflicts with every other hold of its key, so the server granted it
     * after all that came before and before all that came after: its token must be above
     * every earlier token and below every later one. (Two shared holds have no order.) A
     * hold lost, or killed in a fault, is left out: a node frozen past the TTL may deliver,
     * once it runs again, a grant its session lost meanwhile (see docs/RELIABILITY.md).
     *
     * @param list<int> $ids sorted by start
     */
    private function checkTokenOrder(string $key, array $ids): void
    {
        $list = array_values(array_filter(
            array_map(fn (int $id): array => $this->holds[$id], $ids),
            fn (array $hold): bool => !$hold['excused'] && !$this->forgiven($hold, $hold['start'])
        ));
        $n = count($list);
        $laterMin = array_fill(0, $n + 1, PHP_INT_MAX);
        for ($i = $n - 1; $i >= 0; $i--) {
            $laterMin[$i] = min($laterMin[$i + 1], $list[$i]['token']);
        }
        $earlierMax = 0;
        $earlierMaxBy = null;
        foreach ($list as $i => $hold) {
            if (!$hold['shared'] && ($hold['token'] <= $earlierMax || $hold['token'] >= $laterMin[$i + 1])) {
                $this->violation('token', sprintf(
                    'tokens out of grant order on "%s": %s got token %d at %s, but %s',
                    $key, $hold['worker'], $hold['token'], $hold['start'],
                    $hold['token'] <= $earlierMax ? "{$earlierMaxBy} had already been granted token {$earlierMax}" : "a later grant got token {$laterMin[$i + 1]}"
                ));
            }
            if ($hold['token'] > $earlierMax) {
                [$earlierMax, $earlierMaxBy] = [$hold['token'], $hold['worker']];
            }
        }
    }

    /**
     * A timed-out request is a progress failure if, while the server surely had it queued,
     * every key it could have been waiting behind was free for at least freeGapSeconds. Those
     * keys are its own plus, transitively, the keys of multi-key requests pending at the time
     * (FIFO lets such a request block a free key while it waits for another). Not judged in a
     * fault window: a lost node's sessions hold their keys, unseen in the log, until resumed
     * or expired.
     *
     * @param array<string, list<int>> $byKey hold ids of each key
     */
    private function checkTimeout(array $timeout, array $byKey, array $requests): void
    {
        [$keys, $req, $t, $wait, $worker] = $timeout;
        $waitNs = (int) ($wait * self::NS);
        // The server queued it after `req` and gave up before `t`: it surely waited between
        // t - wait and req + wait.
        [$from, $to] = [$t - $waitNs, $req + $waitNs];
        if ($to - $from < $this->freeGapSeconds * self::NS || $this->inFault($req, $t)) {
            return;
        }
        $this->stats['timeouts_checked']++;
        $pendingThen = [];
        foreach ($requests as [$otherKeys, $start, $end]) {
            if ($start < $to && $end > $from) {
                $pendingThen[] = array_fill_keys($otherKeys, true);
            }
        }
        $related = array_fill_keys($keys, true);
        do {
            $grew = false;
            foreach ($pendingThen as $i => $otherKeys) {
                if (array_intersect_key($otherKeys, $related) !== []) {
                    $related += $otherKeys;
                    unset($pendingThen[$i]);
                    $grew = true;
                }
            }
        } while ($grew);

        $busy = [];
        foreach (array_keys($related) as $key) {
            foreach ($byKey[$key] ?? [] as $id) {
                ['start' => $start, 'end' => $end] = $this->holds[$id];
                if ($start < $to && $end > $from) {
                    $busy[] = [max($start, $from), min($end, $to)];
                }
            }
        }
        usort($busy, static fn (array $a, array $b): int => $a[0] <=> $b[0]);
        $freeSince = $from;
        $longest = 0;
        foreach ($busy as [$start, $end]) {
            $longest = max($longest, $start - $freeSince);
            $freeSince = max($freeSince, $end);
        }
        $longest = max($longest, $to - $freeSince);
        if ($longest >= $this->freeGapSeconds * self::NS) {
            $this->violation('progress', sprintf(
                '%s: lock(%s) timed out after %.1f s although %s were free for %.2f s of its wait',
                $worker, implode('+', $keys), $wait, implode(', ', array_keys($related)), $longest / self::NS
            ));
        }
    }

    private function violation(string $kind, string $message): void
    {
        $this->counts[$kind] = ($this->counts[$kind] ?? 0) + 1;
        $this->stats["violations_{$kind}"] = $this->counts[$kind];
        if ($this->counts[$kind] <= self::MAX_LISTED) {
            $this->violations[] = $message;
        } elseif ($this->counts[$kind] === self::MAX_LISTED + 1) {
            $this->violations[] = "(more {$kind} violations not listed)";
        }
    }
}
