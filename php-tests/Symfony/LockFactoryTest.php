<?php

// symfony/lock's LockFactory and Lock on PkLockStore, end to end against a real lockd:
// acquire/isAcquired/release, blocking acquire across a pcntl_fork()ed child, read locks
// with promotion and demotion, auto-release on destruct, autoRelease=false, and TTLs being
// ignored (locks never expire while the holder lives).

declare(strict_types=1);

namespace PkLock\Tests\Symfony;

use Symfony\Component\Lock\Key;
use Symfony\Component\Lock\SharedLockInterface;

final class LockFactoryTest extends SymfonyTestCase
{
    public function testAcquireIsAcquiredRelease(): void
    {
        $factory = $this->factory();
        $resource = $this->key();
        $lock = $factory->createLock($resource);
        $other = $factory->createLock($resource);

        $this->assertTrue($lock->acquire(true));
        $this->assertTrue($lock->isAcquired());
        $this->assertFalse($other->acquire(), 'two locks on one resource conflict in one process');
        $this->assertFalse($other->isAcquired());

        $lock->release();
        $this->assertFalse($lock->isAcquired());
        $this->assertTrue($other->acquire());
        $this->assertTrue($other->isAcquired());
    }

    public function testTtlIsIgnoredLocksNeverExpire(): void
    {
        $lock = $this->factory()->createLock($this->key(), 0.001);

        $this->assertTrue($lock->acquire());
        $this->assertNull($lock->getRemainingLifetime());
        $this->assertFalse($lock->isExpired());
        $lock->refresh(0.001);
        $this->assertTrue($lock->isAcquired());
    }

    public function testDestructReleases(): void
    {
        $factory = $this->factory();
        $resource = $this->key();
        $lock = $factory->createLock($resource);
        $this->assertTrue($lock->acquire());
        $this->assertSame(1, $this->holdersOf($resource));

        unset($lock);
        $this->assertSame(0, $this->holdersOf($resource));
        $this->assertTrue($factory->createLock($resource)->acquire());
    }

    public function testWithoutAutoReleaseTheLockLivesAsLongAsItsKey(): void
    {
        $factory = $this->factory();
        $resource = $this->key();
        $key = new Key($resource);
        $lock = $factory->createLockFromKey($key, 300.0, false);
        $this->assertTrue($lock->acquire());

        unset($lock);
        $this->assertSame(1, $this->holdersOf($resource), 'autoRelease=false keeps the lock');
        $this->assertTrue($factory->createLockFromKey($key, 300.0, false)->isAcquired());

        unset($key);
        $this->assertSame(0, $this->holdersOf($resource), "the key's connection-bound lock goes with the key");
    }

    /** A forked child holds `$resource` through a Lock until `$waiters` queue behind it. */
    private function forkWriter(string $resource, int $waiters = 1): int
    {
        return $this->forkHolderUntilQueued($resource, function () use ($resource): callable {
            $lock = $this->factory()->createLock($resource);
            if (!$lock->acquire()) {
                throw new \RuntimeException('the child could not lock');
            }

            return fn () => $lock->release();
        }, $waiters);
    }

    public function testBlockingAcquireWaitsForAForkedHolder(): void
    {
        $resource = $this->key();
        $pid = $this->forkWriter($resource);

        $lock = $this->factory()->createLock($resource);
        $this->assertFalse($lock->acquire());
        $this->assertTrue($lock->acquire(true));
        $this->assertTrue($lock->isAcquired());
        $this->assertSame(0, $this->reap($pid));
    }

    public function testReadLocks(): void
    {
        $factory = $this->factory();
        $resource = $this->key();
        $reader1 = $factory->createLock($resource);
        $reader2 = $factory->createLock($resource);
        $writer = $factory->createLock($resource);
        $this->assertInstanceOf(SharedLockInterface::class, $reader1);

        $this->assertTrue($reader1->acquireRead());
        $this->assertTrue($reader2->acquireRead(true));
        $this->assertTrue($reader1->isAcquired());
        $this->assertTrue($reader2->isAcquired());
        $this->assertFalse($writer->acquire(), 'a writer waits for the readers');

        $this->assertFalse($reader1->acquire(), 'no promotion while another reader holds');
        $this->assertTrue($reader1->isAcquired(), 'the failed promotion keeps the read lock');

        $reader2->release();
        $this->assertTrue($reader1->acquire(), 'promotion of the only reader');
        $this->assertFalse($reader2->acquireRead(), 'readers wait for the promoted writer');

        $this->assertTrue($reader1->acquireRead(), 'demotion is immediate');
        $this->assertTrue($reader2->acquireRead());
        $this->assertSame(2, $this->holdersOf($resource));
    }

    public function testBlockingReadLockWaitsForAForkedWriter(): void
    {
        $resource = $this->key();
        $pid = $this->forkWriter($resource, waiters: 2);

        // Two readers queued behind the writer are let in together when it leaves; the
        // first waits in a forked helper so that this process can wait as the second.
        $readerPid = $this->fork(function () use ($resource): void {
            $lock = $this->factory()->createLock($resource);
            $lock->acquireRead(true);
            $together = self::serverShows($resource, fn (?array $info) => \count($info['holders'] ?? []) === 2);
            if (!$together) {
                throw new \RuntimeException('the readers were not let in together');
            }
        });
        $this->waitUntil(fn () => $this->waitersOn($resource) === 1, 'the first reader queued');

        $lock = $this->factory()->createLock($resource);
        $this->assertTrue($lock->acquireRead(true));
        $this->assertTrue($lock->isAcquired());
        $this->assertSame(0, $this->reap($pid));
        $this->assertSame(0, $this->reap($readerPid));
    }
}
