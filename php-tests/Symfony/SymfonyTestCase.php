<?php

// Base class of the symfony/lock bridge tests: loads Debian's symfony/lock autoloader (no
// Composer here), builds PkLockStores for the test class's lockd, and runs the other side of
// multi-process tests in pcntl_fork()ed children or in child PHP processes, with bounded waits.

declare(strict_types=1);

namespace PkLock\Tests\Symfony;

use PkLock\Symfony\PkLockStore;
use PkLock\Tests\PhpChild;
use PkLock\Tests\PkLockTestCase;
use Symfony\Component\Lock\LockFactory;
use Throwable;


abstract class SymfonyTestCase extends PkLockTestCase
{
    private const CHILD_TIMEOUT_SECONDS = 30.0;

    /** @var list<int> forked children not reaped yet */
    private array $children = [];

    protected function tearDown(): void
    {
        foreach ($this->children as $pid) {
            posix_kill($pid, SIGKILL);
            pcntl_waitpid($pid, $status);
        }
        $this->children = [];
        parent::tearDown();
    }

    protected function store(): PkLockStore
    {
        return new PkLockStore(self::$server->host(), self::$server->port());
    }

    protected function factory(): LockFactory
    {
        return new LockFactory($this->store());
    }

    /**
     * Forks a child that takes `$resource` with `$take` (which returns how to release it),
     * keeps it until `$waiters` requests wait behind it on the server (bounded), then
     * releases it. Returns the child's pid once the server shows it holding the lock; the
     * child exits 1 if nobody queued.
     */
    protected function forkHolderUntilQueued(string $resource, callable $take, int $waiters = 1): int
    {
        $pid = $this->fork(function () use ($resource, $take, $waiters): void {
            $release = $take();
            $queued = self::serverShows($resource, fn (?array $info) => \count($info['waiters'] ?? []) === $waiters);
            $release();
            if (!$queued) {
                throw new \RuntimeException("{$waiters} waiter(s) never queued behind the child");
            }
        });
        $this->waitUntil(fn () => $this->holdersOf($resource) === 1, 'the child holds the lock');

        return $pid;
    }

    /**
     * Runs `$code` in a pcntl_fork()ed child and returns its pid. The child leaves through
     * exec (no PHP shutdown, no destructors of the parent's objects) with status 0 when
     * `$code` returned without throwing, 1 otherwise.
     */
    protected function fork(callable $code): int
    {
        $pid = pcntl_fork();
        if ($pid === -1) {
            $this->fail('pcntl_fork() failed');
        }
        if ($pid > 0) {
            $this->children[] = $pid;
            return $pid;
        }
        $status = 0;
        try {
            $code();
        } catch (Throwable $e) {
            fwrite(STDERR, "forked child failed: {$e}\n");
            $status = 1;
        }
        @pcntl_exec('/bin/sh', ['-c', "exit {$status}"]);
        posix_kill(posix_getpid(), SIGKILL);
        exit(1); // not reached
    }

    /** Waits (bounded) for a forked child and returns its exit status. */
    protected function reap(int $pid): int
    {
        $deadline = microtime(true) + self::CHILD_TIMEOUT_SECONDS;
        while (pcntl_waitpid($pid, $status, WNOHANG) === 0) {
            if (microtime(true) > $deadline) {
                posix_kill($pid, SIGKILL);
                pcntl_waitpid($pid, $status);
                $this->children = array_values(array_diff($this->children, [$pid]));
                $this->fail("forked child {$pid} did not finish");
            }
            usleep(10_000);
        }
        $this->children = array_values(array_diff($this->children, [$pid]));
        return pcntl_wifexited($status) ? pcntl_wexitstatus($status) : 128 + pcntl_wtermsig($status);
    }

    /**
     * For children: polls the server until `$condition($info)` holds for `$key`'s entry (null
     * when nobody holds or waits for it); false after a bounded wait.
     */
    protected static function serverShows(string $key, callable $condition): bool
    {
        $observer = new \PkLockClient(self::$server->host(), self::$server->port());
        $deadline = microtime(true) + self::CHILD_TIMEOUT_SECONDS;
        do {
            $entry = null;
            foreach ($observer->rpc('locks', ['prefix' => $key])['keys'] as $info) {
                if ($info['key'] === $key) {
                    $entry = $info;
                }
            }
            if ($condition($entry)) {
                return true;
            }
            usleep(10_000);
        } while (microtime(true) < $deadline);
        return false;
    }

    /**
     * A child PHP process (proc_open) with the test autoloading, symfony/lock, and `$store`,
     * a PkLockStore for this test class's lockd, ready for `$code`.
     */
    protected function phpChild(string $code): PhpChild
    {
        $prelude = sprintf(
            "require %s;\nrequire_once '/usr/share/php/Symfony/Component/Lock/autoload.php';\n"
            . "\$store = new PkLock\\Symfony\\PkLockStore(%s, %d);\n",
            var_export(dirname(__DIR__) . '/bootstrap.php', true),
            var_export(self::$server->host(), true),
            self::$server->port()
        );
        return PhpChild::start($prelude . $code);
    }
}
