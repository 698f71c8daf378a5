<?php

// A throwaway one-member etcd for tests of lockd's cluster mode: starts Debian's `etcd` on
// free loopback ports with its data in a temporary directory, waits (bounded) until it
// answers, and stops it (and removes the data) at destruct or exit. kill() and restart()
// crash it and bring it back on the same ports with its data, for fault tests. Like
// LockdServer, only the process that started it stops it.

declare(strict_types=1);

namespace PkLock\Testing;

use RuntimeException;

final class EtcdServer
{
    private const HOST = '127.0.0.1';
    private const READY_TIMEOUT_SECONDS = 30.0;

    /** @var resource|null */
    private $process = null;
    private string $dataDir;
    private int $clientPort;
    private int $peerPort;
    private int $ownerPid;

    private function __construct()
    {
        $this->ownerPid = getmypid();
        $this->dataDir = sys_get_temp_dir() . '/pklock-etcd-' . getmypid() . '-' . bin2hex(random_bytes(4));
        register_shutdown_function(function (): void {
            $this->stop();
        });
    }

    /** Whether `etcd` is on PATH (tests that need it skip, saying why, when it is not). */
    public static function isInstalled(): bool
    {
        exec('command -v etcd 2>/dev/null', $output, $status);
        return $status === 0;
    }

    public static function start(): self
    {
        $etcd = new self();
        $etcd->clientPort = LockdServer::freePort();
        $etcd->peerPort = LockdServer::freePort();
        $etcd->launch();
        return $etcd;
    }

    /** Kills etcd with SIGKILL, as a crash would; its data stays for restart(). */
    public function kill(): void
    {
        if ($this->process === null || getmypid() !== $this->ownerPid) {
            return;
        }
        proc_terminate($this->process, 9);
        proc_close($this->process);
        $this->process = null;
    }

    /** Starts a killed etcd again on the same ports with the same data; returns once it is healthy. */
    public function restart(): void
    {
        $this->kill();
        $this->launch();
    }

    /** What lockd's --cluster takes. */
    public function url(): string
    {
        return 'etcd://' . self::HOST . ':' . $this->clientPort;
    }

    public function stop(): void
    {
        if (getmypid() !== $this->ownerPid) {
            return;
        }
        $this->kill();
        exec('rm -rf ' . escapeshellarg($this->dataDir));
    }

    public function __destruct()
    {
        $this->stop();
    }

    private function launch(): void
    {
        $peer = 'http://' . self::HOST . ':' . $this->peerPort;
        $client = 'http://' . self::HOST . ':' . $this->clientPort;
        $command = [
            'etcd', '--name', 'e0', '--data-dir', $this->dataDir,
            '--listen-client-urls', $client, '--advertise-client-urls', $client,
            '--listen-peer-urls', $peer, '--initial-advertise-peer-urls', $peer,
            '--initial-cluster', "e0={$peer}",
        ];
        $descriptors = [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => ['file', '/dev/null', 'w']];
        $process = proc_open($command, $descriptors, $pipes);
        if ($process === false) {
            throw new RuntimeException('cannot run etcd');
        }
        $this->process = $process;
        $this->waitUntilReady();
    }

    private function waitUntilReady(): void
    {
        $deadline = microtime(true) + self::READY_TIMEOUT_SECONDS;
        $health = 'http://' . self::HOST . ':' . $this->clientPort . '/health';
        while (microtime(true) < $deadline) {
            $body = @file_get_contents($health, false, stream_context_create(['http' => ['timeout' => 1]]));
            if ($body !== false && str_contains($body, '"true"')) {
                return;
            }
            usleep(100_000);
        }
        throw new RuntimeException('etcd did not become healthy within ' . self::READY_TIMEOUT_SECONDS . ' s');
    }
}
