<?php

// PkLockMutex (malkusch/lock 2.x, loaded from Debian's php-malkusch-lock) against a real
// lockd: synchronized() runs the code under the lock and releases it (also on exceptions),
// two mutex objects exclude each other, re-entrance, the wait limit (TimeoutException), the
// double-checked `check()->then()`, and exclusion across processes (a shared counter that
// several child processes increment without losing updates).

declare(strict_types=1);

namespace PkLock\Tests\Mutex;

use malkusch\lock\exception\LockAcquireException;
use malkusch\lock\exception\TimeoutException;
use malkusch\lock\mutex\LockMutex;
use PkLock\Mutex\PkLockMutex;
use PkLock\Tests\PhpChild;
use PkLock\Tests\PkLockTestCase;
use RuntimeException;


final class PkLockMutexTest extends PkLockTestCase
{
    private function mutex(string $name, ?float $timeout = null): PkLockMutex
    {
        return new PkLockMutex($name, $timeout, $this->client());
    }

    public function testTakesANodeListForItsClient(): void
    {
        $nodes = sprintf('127.0.0.1:%d,%s:%d', $this->closedPort(), self::$server->host(), self::$server->port());
        $key = $this->key();
        $mutex = new PkLockMutex($key, 0.0, $nodes);
        $this->assertSame(1, $mutex->synchronized(fn (): int => $this->holdersOf($key)));
        // Another connection than holdersOf(): the pipelined release may not have been applied yet.
        $this->waitUntil(fn (): bool => $this->holdersOf($key) === 0, "the release");
    }

    public function testIsAPhpLockMutex(): void
    {
        $this->assertInstanceOf(LockMutex::class, $this->mutex($this->key()));
    }

    public function testSynchronizedRunsTheCodeUnderTheLockAndReleasesIt(): void
    {
        $key = $this->key();
        $mutex = $this->mutex($key);

        $result = $mutex->synchronized(function () use ($key, $mutex): string {
            $this->assertSame(1, $this->holdersOf($key));
            $this->assertNotNull($mutex->getToken());
            $this->assertFalse($this->client()->lock($key, 0), 'nobody else gets the lock meanwhile');
            return 'done';
        });

        $this->assertSame('done', $result);
        $this->assertSame(0, $this->holdersOf($key));
        $this->assertNull($mutex->getToken());
    }

    public function testAnExceptionInTheCodeReleasesTheLock(): void
    {
        $key = $this->key();
        $mutex = $this->mutex($key);

        try {
            $mutex->synchronized(function (): void {
                throw new RuntimeException('boom');
            });
            $this->fail('the exception must propagate');
        } catch (RuntimeException $e) {
            $this->assertSame('boom', $e->getMessage());
        }
        $this->assertSame(0, $this->holdersOf($key));
    }

    public function testTwoMutexObjectsForOneNameExcludeEachOther(): void
    {
        $key = $this->key();
        $outer = $this->mutex($key);
        $inner = $this->mutex($key, 0.0);
        $ran = false;

        $outer->synchronized(function () use ($inner, &$ran): void {
            try {
                $inner->synchronized(function () use (&$ran): void {
                    $ran = true;
                });
                $this->fail('the second mutex must not get the lock');
            } catch (TimeoutException $e) {
            }
        });
        $this->assertFalse($ran);
        $this->assertTrue($inner->synchronized(fn () => true), 'free again afterwards');
    }

    public function testNestedSynchronizedOnOneMutexIsReentrant(): void
    {
        $key = $this->key();
        $mutex = $this->mutex($key);

        $mutex->synchronized(function () use ($mutex, $key): void {
            $this->assertSame(7, $mutex->synchronized(fn () => 7));
            $this->assertSame(1, $this->holdersOf($key), 'the inner return does not release the outer hold');
        });
        $this->assertSame(0, $this->holdersOf($key));
    }

    public function testTheWaitLimitThrowsATimeoutWithoutRunningTheCode(): void
    {
        $key = $this->key();
        $holder = $this->client();
        $this->assertTrue($holder->lock($key));
        $ran = false;

        foreach ([0.0, 0.2] as $timeout) {
            try {
                $this->mutex($key, $timeout)->synchronized(function () use (&$ran): void {
                    $ran = true;
                });
                $this->fail("the wait of {$timeout} s must run out");
            } catch (TimeoutException $e) {
                $this->assertInstanceOf(LockAcquireException::class, $e);
            }
        }
        $this->assertFalse($ran);
        $this->assertSame(0, $this->waitersOn($key), 'the waiter left the queue');
    }

    public function testTheWaitLimitIsEnoughWhenTheHolderLeavesInTime(): void
    {
        $key = $this->key();
        $holder = $this->child(sprintf(
            '$client->lock(%1$s); echo "locked\n";'
            . ' for ($i = 0; $i < 2000 && count($client->rpc("locks", ["prefix" => %1$s])["keys"][0]["waiters"] ?? []) === 0; $i++) { usleep(10000); }'
            . ' $client->unlock(%1$s); echo "released\n";',
            var_export($key, true)
        ));
        $this->assertSame('locked', $holder->readLine());

        $this->assertSame('mine', $this->mutex($key, 60.0)->synchronized(fn () => 'mine'));
        $this->assertSame('released', $holder->readLine());
    }

    public function testCheckThenIsDoubleChecked(): void
    {
        $mutex = $this->mutex($this->key());
        $calls = 0;

        $result = $mutex->check(function () use (&$calls): bool {
            $calls++;
            return true;
        })->then(fn () => 'ran');

        $this->assertSame('ran', $result);
        $this->assertSame(2, $calls, 'checked before and again under the lock');
    }

    public function testLockdErrorsAreLockAcquireExceptions(): void
    {
        $this->expectException(LockAcquireException::class);
        (new PkLockMutex($this->key(), 0.0, new \PkLockClient('127.0.0.1', $this->closedPort(), ['connect_timeout' => 1.0])))
            ->synchronized(fn () => null);
    }

    public function testExclusionAcrossProcesses(): void
    {
        $key = $this->key();
        $counter = tempnam(sys_get_temp_dir(), 'pklock-counter-');
        file_put_contents($counter, '0');
        $children = 4;
        $rounds = 25;

        // Each increment reads, yields and writes back: without exclusion, updates get lost.
        $code = sprintf(
            'require %s; require_once "/usr/share/php/Malkusch/Lock/autoload.php";'
            . ' $mutex = new PkLock\Mutex\PkLockMutex(%s, 60.0, $client);'
            . ' for ($i = 0; $i < %d; $i++) { $mutex->synchronized(function () { $n = (int) file_get_contents(%s); usleep(500); file_put_contents(%4$s, (string) ($n + 1)); }); }'
            . ' echo "done\n";',
            var_export(dirname(__DIR__) . '/bootstrap.php', true),
            var_export($key, true),
            $rounds,
            var_export($counter, true)
        );
        $running = [];
        for ($i = 0; $i < $children; $i++) {
            $running[] = $this->child($code);
        }
        foreach ($running as $child) {
            $this->assertSame('done', $child->readLine(60.0), $child->stderr());
            $this->assertSame(0, $child->wait());
        }

        $this->assertSame((string) ($children * $rounds), file_get_contents($counter));
        unlink($counter);
    }

    public function testRejectsANegativeTimeout(): void
    {
        $this->expectException(\InvalidArgumentException::class);
        new PkLockMutex($this->key(), -1.0, $this->client());
    }
}
