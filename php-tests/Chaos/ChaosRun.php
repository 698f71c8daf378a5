<?php

// The chaos driver: starts a target (a throwaway lockd, or a cluster that injects its own
// faults: ChaosTarget) and PHP workers (worker.php, with the real pklock.so) that lock a
// few shared keys in a loop, SIGKILLs workers at random (holders first) and starts
// replacements, then stops everything and hands the workers' logs, the kill times and the
// target's fault windows to HistoryChecker. ChaosTest runs it small in `make test`; run.php
// (`make chaos`, `make chaos-cluster`) runs it for as long as asked.

declare(strict_types=1);

namespace PkLock\Tests\Chaos;

use PkLock\Tests\PhpChild;
use RuntimeException;

final class ChaosRun
{
    private const NS = 1_000_000_000;

    /** How long after the end a worker may take to finish its last lock(), beyond its
     * wait and its io_timeout (which a call to a lost node may take). */
    private const FINISH_GRACE_SECONDS = 10.0;

    /** @var array<string, array{process: resource, log: string, offset: int, last: ?string}> */
    private array $live = [];
    /** @var array<string, string> worker name => log file, every worker ever started */
    private array $logs = [];
    /** @var array<string, int> worker name => hrtime when the kill was decided */
    private array $killedAt = [];
    private int $started = 0;
    private string $dir;
    private string $extension;

    /**
     * @param ChaosTarget $target the lockd or cluster the workers use
     * @param int $workers workers alive at any time
     * @param float $seconds how long workers lock and the driver kills
     * @param list<string> $keys the keys workers fight over
     * @param float $wait each lock()'s wait, seconds
     * @param float $killEverySeconds mean pause between two kills
     */
    public function __construct(
        private ChaosTarget $target,
        private int $workers = 6,
        private float $seconds = 12.0,
        private array $keys = ['alpha', 'beta', 'gamma'],
        private float $wait = 2.0,
        private float $killEverySeconds = 0.25,
    ) {
        $this->extension = PhpChild::extensionPath();
        $this->dir = sys_get_temp_dir() . '/pklock-chaos-' . getmypid() . '-' . bin2hex(random_bytes(4));
        if (!mkdir($this->dir)) {
            throw new RuntimeException("cannot create {$this->dir}");
        }
    }

    /**
     * Runs the chaos and checks the history.
     *
     * @return array{violations: list<string>, stats: array<string, int|float>, dir: string}
     */
    public function run(HistoryChecker $checker): array
    {
        $this->target->start();
        try {
            $until = hrtime(true) + (int) ($this->seconds * self::NS);
            for ($i = 0; $i < $this->workers; $i++) {
                $this->startWorker($until);
            }
            while (hrtime(true) < $until) {
                usleep(mt_rand(0, (int) (2e6 * $this->killEverySeconds)));
                $this->target->disturb($until);
                if (hrtime(true) >= $until) {
                    break;
                }
                $this->killOne();
                $this->startWorker($until);
            }
            $this->target->heal();
            $violations = $this->awaitWorkers();
            $leftovers = $this->target->leftovers();
        } finally {
            foreach ($this->live as $worker) {
                proc_terminate($worker['process'], 9);
                proc_close($worker['process']);
            }
            $this->live = [];
            $this->target->stop();
        }

        $histories = [];
        foreach ($this->logs as $name => $file) {
            $histories[$name] = $this->readLog($name, $file, $violations);
        }
        $violations = array_merge($violations, $leftovers, $checker->check($histories, $this->killedAt, $this->target->disturbed()));
        return ['violations' => $violations, 'stats' => $checker->stats() + $this->target->stats(), 'dir' => $this->dir];
    }

    /** Deletes the logs (keep them when a run failed: the violations point into them). */
    public function cleanUp(): void
    {
        foreach (glob($this->dir . '/*') ?: [] as $file) {
            unlink($file);
        }
        @rmdir($this->dir);
    }

    private function startWorker(int $until): void
    {
        $name = sprintf('w%03d', ++$this->started);
        $log = "{$this->dir}/{$name}.log";
        touch($log);
        $ioTimeouts = $this->target->ioTimeouts();
        $command = [
            PHP_BINARY, '-n', '-d', 'extension=' . $this->extension, '-d', 'display_errors=stderr',
            __DIR__ . '/worker.php', $this->target->servers(), $log, (string) mt_rand(), implode(',', $this->keys),
            (string) $this->wait, (string) $until, (string) $ioTimeouts[array_rand($ioTimeouts)],
        ];
        $descriptors = [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => ['file', "{$this->dir}/{$name}.err", 'w']];
        $process = proc_open($command, $descriptors, $pipes);
        if ($process === false) {
            throw new RuntimeException('cannot start a chaos worker');
        }
        $this->live[$name] = ['process' => $process, 'log' => $log, 'offset' => 0, 'last' => null];
        $this->logs[$name] = $log;
    }

    /** SIGKILLs a live worker: a holder every other time, when there is one (not more often, or
     * no long hold would ever outlast a wait and the timeout check would never run). */
    private function killOne(): void
    {
        $holders = [];
        foreach ($this->live as $name => &$worker) {
            $this->follow($worker);
            if (in_array($worker['last'], ['grant', 'commit'], true)) {
                $holders[] = $name;
            }
        }
        unset($worker);
        $pool = ($holders !== [] && mt_rand(0, 1) === 0) ? $holders : array_keys($this->live);
        $victim = $pool[array_rand($pool)];
        // The time is taken before the signal is sent: the victim's hold surely lasted
        // until then, so the checker never stretches a hold beyond the real one.
        $this->killedAt[$victim] = hrtime(true);
        proc_terminate($this->live[$victim]['process'], 9);
        proc_close($this->live[$victim]['process']);
        unset($this->live[$victim]);
    }

    /** Reads what a worker appended to its log since last time, to know its last event. */
    private function follow(array &$worker): void
    {
        $data = (string) file_get_contents($worker['log'], false, null, $worker['offset']);
        $end = strrpos($data, "\n");
        if ($end === false) {
            return;
        }
        $worker['offset'] += $end + 1;
        $lines = explode("\n", substr($data, 0, $end));
        $worker['last'] = json_decode((string) end($lines), true)['e'] ?? null;
    }

    /**
     * Waits for the workers to finish their last lock() after the end; a worker still
     * running after the grace is killed and left out of the kill list, so the checker
     * reports it as one that never finished.
     *
     * @return list<string> workers that exited with an error
     */
    private function awaitWorkers(): array
    {
        $problems = [];
        $deadline = microtime(true) + $this->wait + max($this->target->ioTimeouts()) + self::FINISH_GRACE_SECONDS;
        while ($this->live !== [] && microtime(true) < $deadline) {
            foreach ($this->live as $name => $worker) {
                $status = proc_get_status($worker['process']);
                if (!$status['running']) {
                    if ($status['exitcode'] !== 0) {
                        $problems[] = "{$name} exited with {$status['exitcode']}: " . trim((string) file_get_contents("{$this->dir}/{$name}.err"));
                    }
                    proc_close($worker['process']);
                    unset($this->live[$name]);
                }
            }
            usleep(20_000);
        }
        return $problems;
    }

    /** @param list<string> $violations a line that is not JSON is added here */
    private function readLog(string $name, string $file, array &$violations): array
    {
        $events = [];
        foreach (file($file, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) ?: [] as $n => $line) {
            $event = json_decode($line, true);
            if (!is_array($event)) {
                $violations[] = "{$name}: line " . ($n + 1) . ' of its log is not JSON: ' . $line;
                break;
            }
            $events[] = $event;
        }
        return $events;
    }
}
