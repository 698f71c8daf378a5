<?php

// A throwaway lockd for tests and demos: finds the binary (LOCKD_BIN or PATH), starts it on a
// free loopback port, waits (bounded) until it accepts connections, and stops it at destruct
// or at exit. Only the process that started the server stops it, so a forked child that
// inherits this object cannot kill its parent's server.

declare(strict_types=1);

namespace PkLock\Testing;

use RuntimeException;

final class LockdServer
{
    private const HOST = '127.0.0.1';
    private const READY_TIMEOUT_SECONDS = 15.0;
    private const STOP_TIMEOUT_SECONDS = 10.0;
    private const START_ATTEMPTS = 3;
    // Linux's numbers, as pcntl (and its SIG* constants) may not be loaded.
    private const SIGSTOP = 19;
    private const SIGCONT = 18;

    /** @var resource|null */
    private $process = null;
    private string $logFile;
    private int $port = 0;
    private int $ownerPid;

    /** @param list<string> $args extra lockd options, e.g. ['--max-locks', '2'] */
    private function __construct(private string $binary, private array $args)
    {
        $this->ownerPid = getmypid();
        $this->logFile = tempnam(sys_get_temp_dir(), 'lockd-log-');
        register_shutdown_function(function (): void {
            $this->stop();
        });
    }

    /** @param list<string> $args extra lockd options, e.g. ['--max-locks', '2'] */
    public static function start(array $args = []): self
    {
        $server = new self(self::findBinary(), array_values(array_map('strval', $args)));
        $server->startOnFreePort();
        return $server;
    }

    /** LOCKD_BIN if set, else `lockd` on PATH. */
    public static function findBinary(): string
    {
        $fromEnv = getenv('LOCKD_BIN');
        if ($fromEnv !== false && $fromEnv !== '') {
            if (!is_file($fromEnv) || !is_executable($fromEnv)) {
                throw new RuntimeException("LOCKD_BIN={$fromEnv} is not an executable file");
            }
            return $fromEnv;
        }
        foreach (explode(PATH_SEPARATOR, (string) getenv('PATH')) as $dir) {
            $candidate = rtrim($dir, '/') . '/lockd';
            if ($dir !== '' && is_file($candidate) && is_executable($candidate)) {
                return $candidate;
            }
        }
        throw new RuntimeException('lockd not found: set LOCKD_BIN or put lockd on PATH (cargo build --release -p lockd)');
    }

    public function host(): string
    {
        return self::HOST;
    }

    public function port(): int
    {
        return $this->port;
    }

    public function isRunning(): bool
    {
        return $this->process !== null && proc_get_status($this->process)['running'];
    }

    /** What lockd wrote to stderr so far. */
    public function log(): string
    {
        return (string) @file_get_contents($this->logFile);
    }

    /** Stops lockd gracefully (SIGTERM, then SIGKILL if it lingers); idempotent. */
    public function stop(): void
    {
        $this->terminate(15);
    }

    /** Kills lockd with SIGKILL, as a crash would. */
    public function kill(): void
    {
        $this->terminate(9);
    }

    /**
     * Freezes lockd (SIGSTOP): it keeps its connections open but answers nothing until
     * resume(). Returns once every thread of it has stopped (Linux: read from /proc).
     */
    public function pause(): void
    {
        $this->signal(self::SIGSTOP);
        $pid = proc_get_status($this->process)['pid'];
        $deadline = microtime(true) + self::STOP_TIMEOUT_SECONDS;
        $stopped = static function (string $stat): bool {
            $text = (string) @file_get_contents($stat);
            // The state letter follows the parenthesised command name.
            return substr($text, (int) strrpos($text, ')') + 2, 1) === 'T';
        };
        do {
            $threads = glob("/proc/{$pid}/task/*/stat") ?: [];
            if ($threads !== [] && count(array_filter($threads, $stopped)) === count($threads)) {
                return;
            }
            usleep(1_000);
        } while (microtime(true) < $deadline);
        throw new RuntimeException("lockd (pid {$pid}) did not stop");
    }

    /** Lets a paused lockd go on (SIGCONT). */
    public function resume(): void
    {
        $this->signal(self::SIGCONT);
    }

    /** Stops lockd and starts it again on the same port (with an empty lock table). */
    public function restart(): void
    {
        $this->stop();
        $this->launch($this->port);
        if (!$this->waitUntilReady()) {
            throw new RuntimeException("lockd did not come back on port {$this->port}:\n" . $this->log());
        }
    }

    public function __destruct()
    {
        $this->stop();
        if (getmypid() === $this->ownerPid) {
            @unlink($this->logFile);
        }
    }

    private function startOnFreePort(): void
    {
        // Another process may take the free port between our probe and lockd's bind: retry.
        for ($attempt = 1; $attempt <= self::START_ATTEMPTS; $attempt++) {
            $this->launch(self::freePort());
            if ($this->waitUntilReady()) {
                return;
            }
            $this->kill();
        }
        throw new RuntimeException("lockd did not start ({$this->binary}):\n" . $this->log());
    }

    /** A loopback port nothing listens on now. */
    public static function freePort(): int
    {
        $probe = stream_socket_server('tcp://' . self::HOST . ':0', $errno, $error);
        if ($probe === false) {
            throw new RuntimeException("cannot find a free port: {$error}");
        }
        $name = stream_socket_get_name($probe, false);
        fclose($probe);
        return (int) substr($name, strrpos($name, ':') + 1);
    }

    private function launch(int $port): void
    {
        $this->port = $port;
        $command = array_merge([$this->binary, '--listen', self::HOST . ':' . $port], $this->args);
        $descriptors = [0 => ['file', '/dev/null', 'r'], 1 => ['file', $this->logFile, 'a'], 2 => ['file', $this->logFile, 'a']];
        $process = proc_open($command, $descriptors, $pipes);
        if ($process === false) {
            throw new RuntimeException('cannot run ' . $this->binary);
        }
        $this->process = $process;
    }

    /** Polls until lockd accepts a connection; false if it exited or took too long. */
    private function waitUntilReady(): bool
    {
        $deadline = microtime(true) + self::READY_TIMEOUT_SECONDS;
        while (microtime(true) < $deadline) {
            if (!$this->isRunning()) {
                return false;
            }
            $socket = @stream_socket_client('tcp://' . self::HOST . ':' . $this->port, $errno, $error, 0.2);
            if ($socket !== false) {
                fclose($socket);
                return true;
            }
            usleep(20_000);
        }
        return false;
    }

    private function signal(int $signal): void
    {
        if ($this->process !== null && getmypid() === $this->ownerPid) {
            proc_terminate($this->process, $signal);
        }
    }

    private function terminate(int $signal): void
    {
        if ($this->process === null || getmypid() !== $this->ownerPid) {
            return;
        }
        proc_terminate($this->process, $signal);
        $deadline = microtime(true) + self::STOP_TIMEOUT_SECONDS;
        while (proc_get_status($this->process)['running'] && microtime(true) < $deadline) {
            usleep(10_000);
        }
        if (proc_get_status($this->process)['running']) {
            proc_terminate($this->process, 9);
        }
        proc_close($this->process);
        $this->process = null;
    }
}
