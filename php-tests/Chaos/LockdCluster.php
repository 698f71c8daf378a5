<?php

// The chaos target of cluster mode: one etcd member and three lockd nodes on one prefix
// with a short session TTL, and the faults a cluster must survive, one at a time, taking
// turns so that a short run sees each kind: SIGKILL of a node (restarted on its port a
// little later), SIGSTOP of a node for longer than the TTL (then SIGCONT: its sessions
// expired meanwhile, so it must drop its clients rather than serve them), and optionally
// SIGKILL of etcd (restarted with its data). See ChaosTarget and docs/RELIABILITY.md.

declare(strict_types=1);

namespace PkLock\Tests\Chaos;

use PkLock\Testing\EtcdServer;
use PkLock\Testing\LockdServer;
use RuntimeException;

final class LockdCluster implements ChaosTarget
{
    private const NS = 1_000_000_000;
    private const NODES = 3;
    private const KILL_NODE = 'node_kill';
    private const PAUSE_NODE = 'node_pause';
    private const KILL_ETCD = 'etcd_kill';
    /** [shortest, longest] outage of each fault, seconds; a pause's is added to the TTL. */
    private const OUTAGE = [self::KILL_NODE => [0.3, 2.0], self::PAUSE_NODE => [0.5, 2.5], self::KILL_ETCD => [0.5, 3.0]];
    /** Tries at bringing a killed node back (its port may be taken for a moment). */
    private const RESTART_ATTEMPTS = 5;
    /** What lockd logs for the stats: resumes it took, times it dropped its clients. */
    private const LOG_COUNTS = [
        'server_resumes' => 'session resumed on this node',
        'server_lease_expired' => "this node's lease expired",
        'server_dropped_clients' => "closing its clients' connections",
    ];

    private ?EtcdServer $etcd = null;
    /** @var list<LockdServer> */
    private array $nodes = [];
    /** @var list<string> the fault kinds, taken in turn */
    private array $kinds;
    private int $turn = 0;
    /** @var array{kind: string, node: ?int, since: int, healAt: int}|null */
    private ?array $fault = null;
    private int $nextFaultAt = 0;
    /** @var list<array{0: int, 1: int}> */
    private array $disturbed = [];
    /** @var array<string, int> */
    private array $counts = [self::KILL_NODE => 0, self::PAUSE_NODE => 0, self::KILL_ETCD => 0];
    /** @var array<string, int> */
    private array $serverCounts = [];

    /**
     * @param int $ttl the nodes' --session-ttl, seconds
     * @param float $faultGapSeconds mean time between the end of a fault and the start of the next
     * @param bool $killEtcd whether etcd's SIGKILL is one of the faults
     */
    public function __construct(private int $ttl = 4, private float $faultGapSeconds = 4.0, bool $killEtcd = false)
    {
        $this->kinds = $killEtcd ? [self::KILL_NODE, self::PAUSE_NODE, self::KILL_ETCD] : [self::KILL_NODE, self::PAUSE_NODE];
    }

    public function start(): void
    {
        $this->etcd = EtcdServer::start();
        $prefix = '/pklock-chaos/' . getmypid() . '-' . bin2hex(random_bytes(4));
        for ($i = 0; $i < self::NODES; $i++) {
            $this->nodes[] = LockdServer::start(
                ['--cluster', $this->etcd->url(), '--cluster-prefix', $prefix, '--node-id', "n{$i}", '--session-ttl', (string) $this->ttl]
            );
        }
        $this->nextFaultAt = hrtime(true) + $this->gap();
    }

    public function servers(): string
    {
        return implode(',', array_map(static fn (LockdServer $node): string => $node->host() . ':' . $node->port(), $this->nodes));
    }

    /** Short ones, that give up on a frozen node well within the TTL, and long ones, that
     * are still waiting when it wakes up (and would take whatever it sends then). */
    public function ioTimeouts(): array
    {
        return [1.5, 10.0];
    }

    public function disturb(int $until): void
    {
        $now = hrtime(true);
        if ($this->fault !== null) {
            if ($now >= $this->fault['healAt']) {
                $this->heal();
            }
            return;
        }
        $kind = $this->kinds[$this->turn % count($this->kinds)];
        $outage = $this->outage($kind);
        // The fault must be over, and its sessions resumed or expired, before the workers stop.
        if ($now < $this->nextFaultAt || $now + $outage + ($this->ttl + 2) * self::NS >= $until) {
            return;
        }
        $this->turn++;
        $this->counts[$kind]++;
        $node = $kind === self::KILL_ETCD ? null : array_rand($this->nodes);
        match ($kind) {
            self::KILL_NODE => $this->nodes[$node]->kill(),
            self::PAUSE_NODE => $this->nodes[$node]->pause(),
            self::KILL_ETCD => $this->etcd->kill(),
        };
        $this->fault = ['kind' => $kind, 'node' => $node, 'since' => $now, 'healAt' => $now + $outage];
    }

    public function heal(): void
    {
        if ($this->fault === null) {
            return;
        }
        ['kind' => $kind, 'node' => $node, 'since' => $since] = $this->fault;
        $this->fault = null;
        match ($kind) {
            self::KILL_NODE => $this->restartNode($this->nodes[$node]),
            self::PAUSE_NODE => $this->nodes[$node]->resume(),
            self::KILL_ETCD => $this->etcd->restart(),
        };
        $now = hrtime(true);
        $this->disturbed[] = [$since, $now + $this->settleNs()];
        $this->nextFaultAt = $now + $this->gap();
    }

    public function disturbed(): array
    {
        return $this->disturbed;
    }

    /** Sessions of a node that died expire only after the TTL: the bound allows for that. */
    public function leftovers(): array
    {
        $problems = [];
        foreach ($this->nodes as $i => $node) {
            $problem = Leftovers::of($node, $this->ttl + 10.0, "node n{$i}")['problem'];
            if ($problem !== null) {
                $problems[] = $problem;
            }
        }
        foreach (self::LOG_COUNTS as $stat => $line) {
            $this->serverCounts[$stat] = array_sum(array_map(static fn (LockdServer $node): int => substr_count($node->log(), $line), $this->nodes));
        }
        return $problems;
    }

    public function stats(): array
    {
        return ['node_kills' => $this->counts[self::KILL_NODE], 'node_pauses' => $this->counts[self::PAUSE_NODE], 'etcd_kills' => $this->counts[self::KILL_ETCD]]
            + $this->serverCounts;
    }

    public function stop(): void
    {
        $this->heal();
        foreach ($this->nodes as $node) {
            $node->stop();
        }
        $this->etcd?->stop();
    }

    /** The fault's outage in ns: a pause outlasts the TTL, so the frozen node's sessions expire. */
    private function outage(string $kind): int
    {
        [$min, $max] = self::OUTAGE[$kind];
        $seconds = $min + ($max - $min) * mt_rand() / mt_getrandmax();
        return (int) ((($kind === self::PAUSE_NODE ? $this->ttl : 0) + $seconds) * self::NS);
    }

    /** How long after a fault's end clients may still feel it: a session left behind
     * expires after the TTL, a client stuck on a frozen node notices after its io_timeout,
     * and resuming takes a few more seconds on a busy machine. */
    private function settleNs(): int
    {
        return (int) (($this->ttl + max($this->ioTimeouts()) + 5.0) * self::NS);
    }

    private function gap(): int
    {
        return (int) ($this->faultGapSeconds * (0.5 + mt_rand() / mt_getrandmax()) * self::NS);
    }

    private function restartNode(LockdServer $node): void
    {
        for ($attempt = 1; ; $attempt++) {
            try {
                $node->restart();
                return;
            } catch (RuntimeException $e) {
                if ($attempt === self::RESTART_ATTEMPTS) {
                    throw $e;
                }
                usleep(500_000);
            }
        }
    }
}
