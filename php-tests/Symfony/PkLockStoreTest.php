<?php

// The symfony/lock store contract for PkLockStore against a real lockd: save/exists/delete,
// two keys on one resource in one process, idempotent save, isolated delete, unserializable
// keys, no expiry, shared locks with promotion/demotion, waitAndSave across a pcntl_fork()ed
// child, upgrade waits and deadlocks, and kill -9 of a holder releasing to a waiter.

declare(strict_types=1);

namespace PkLock\Tests\Symfony;

use PkLock\Symfony\PkLockStore;
use Symfony\Component\Lock\BlockingSharedLockStoreInterface;
use Symfony\Component\Lock\BlockingStoreInterface;
use Symfony\Component\Lock\Exception\InvalidArgumentException;
use Symfony\Component\Lock\Exception\LockAcquiringException;
use Symfony\Component\Lock\Exception\LockConflictedException;
use Symfony\Component\Lock\Exception\UnserializableKeyException;
use Symfony\Component\Lock\Key;
use Symfony\Component\Lock\PersistingStoreInterface;
use Symfony\Component\Lock\SharedLockStoreInterface;

final class PkLockStoreTest extends SymfonyTestCase
{
    public function testImplementsTheBlockingAndSharedInterfaces(): void
    {
        $store = $this->store();

        $this->assertInstanceOf(PersistingStoreInterface::class, $store);
        $this->assertInstanceOf(BlockingStoreInterface::class, $store);
        $this->assertInstanceOf(SharedLockStoreInterface::class, $store);
        $this->assertInstanceOf(BlockingSharedLockStoreInterface::class, $store);
    }

    public function testSaveExistsDelete(): void
    {
        $store = $this->store();
        $key = new Key($this->key());

        $this->assertFalse($store->exists($key));
        $store->save($key);
        $this->assertTrue($store->exists($key));
        $this->assertSame(1, $this->holdersOf((string) $key));
        $store->delete($key);
        $this->assertFalse($store->exists($key));
        $this->assertSame(0, $this->holdersOf((string) $key));
    }

    public function testDifferentKeysOnTheSameResourceConflictInOneProcess(): void
    {
        $store = $this->store();
        $resource = $this->key();
        $key1 = new Key($resource);
        $key2 = new Key($resource);

        $store->save($key1);
        $this->assertTrue($store->exists($key1));
        $this->assertFalse($store->exists($key2));

        try {
            $store->save($key2);
            $this->fail('a second key on the same resource must conflict');
        } catch (LockConflictedException $e) {
        }
        $this->assertTrue($store->exists($key1));
        $this->assertFalse($store->exists($key2));

        $store->delete($key1);
        $this->assertFalse($store->exists($key1));
        $store->save($key2);
        $this->assertTrue($store->exists($key2));
        $this->assertFalse($store->exists($key1));
    }

    public function testTwoStoreObjectsSeeTheSameLocks(): void
    {
        $resource = $this->key();
        $key1 = new Key($resource);
        $key2 = new Key($resource);

        $this->store()->save($key1);
        $this->expectException(LockConflictedException::class);
        $this->store()->save($key2);
    }

    public function testSaveTwiceKeepsTheLock(): void
    {
        $store = $this->store();
        $key = new Key($this->key());

        $store->save($key);
        $store->save($key);
        $this->assertTrue($store->exists($key));
        $store->delete($key);
        $this->assertFalse($store->exists($key), 'one delete releases a lock saved twice');
    }

    public function testDeleteIsIsolatedToItsKey(): void
    {
        $store = $this->store();
        $resource = $this->key();
        $key1 = new Key($resource);
        $key2 = new Key($resource);

        $store->save($key1);
        $store->delete($key2);
        $this->assertTrue($store->exists($key1), "deleting a key that holds nothing must not release another key's lock");

        $store->delete(new Key($this->key('other')));
        $this->assertTrue($store->exists($key1));
    }

    public function testExistsAsksTheServerAboutThisKey(): void
    {
        $store = $this->store();
        $resource = $this->key();
        $key = new Key($resource);
        $store->save($key);
        $this->assertTrue($store->exists($key));

        // Take the lock away behind the client's back: this process's connection is shared,
        // so a raw unlock naming the key's owner releases it on the server only.
        $owner = $this->lockInfo($resource)['holders'][0]['owner'];
        $this->client()->rpc('unlock', ['keys' => $resource, 'owner' => $owner]);
        $this->assertSame(0, $this->holdersOf($resource));

        $this->assertFalse($store->exists($key), 'exists() reports what lockd says, not what the client remembers');
        unset($key); // its client releases by owner, which reports nothing
    }

    public function testKeysAreMarkedUnserializable(): void
    {
        $store = $this->store();
        $key = new Key($this->key());
        $store->save($key);

        $this->expectException(UnserializableKeyException::class);
        serialize($key);
    }

    public function testLocksDoNotExpire(): void
    {
        $store = $this->store();
        $key = new Key($this->key());
        $store->save($key);

        $store->putOffExpiration($key, 0.001);
        $this->assertNull($key->getRemainingLifetime());
        $this->assertFalse($key->isExpired());
        $this->assertTrue($store->exists($key));
    }

    public function testPutOffExpirationOfALockNotHeldConflicts(): void
    {
        $store = $this->store();
        $key = new Key($this->key());

        $this->expectException(LockConflictedException::class);
        $store->putOffExpiration($key, 300.0);
    }

    public function testPutOffExpirationAfterDeleteConflicts(): void
    {
        $store = $this->store();
        $key = new Key($this->key());
        $store->save($key);
        $store->delete($key);

        $this->expectException(LockConflictedException::class);
        $store->putOffExpiration($key, 300.0);
    }

    public function testDestroyingTheKeyReleasesItsLock(): void
    {
        $store = $this->store();
        $resource = $this->key();
        $key = new Key($resource);
        $store->save($key);
        $this->assertSame(1, $this->holdersOf($resource));

        unset($key);
        $other = new Key($resource);
        $store->save($other);
        $this->assertTrue($store->exists($other));
    }

    public function testAnEmptyResourceIsRefused(): void
    {
        $this->expectException(InvalidArgumentException::class);
        $this->store()->save(new Key(''));
    }

    public function testAnUnreachableServerIsAnAcquiringErrorAndNothingExists(): void
    {
        $store = new PkLockStore('127.0.0.1', $this->closedPort(), ['connect_timeout' => 1.0]);
        $key = new Key($this->key());

        try {
            $store->save($key);
            $this->fail('save() without a server must fail');
        } catch (LockAcquiringException $e) {
            $this->assertInstanceOf(\PkLockConnectionException::class, $e->getPrevious());
        }
        $this->assertFalse($store->exists($key));
        $store->delete($key);
    }

    public function testDsn(): void
    {
        $dsn = sprintf('pklock://%s:%d?connect_timeout=2&io_timeout=5', self::$server->host(), self::$server->port());
        $store = PkLockStore::fromDsn($dsn);
        $key = new Key($this->key());
        $store->save($key);
        $this->assertTrue($store->exists($key));
        $this->assertTrue($this->store()->exists($key), 'stores for the same server share the key state');
    }

    public function testDsnWithANodeList(): void
    {
        $dsn = sprintf('pklock://127.0.0.1:%d,%s:%d?connect_timeout=1', $this->closedPort(), self::$server->host(), self::$server->port());
        $store = PkLockStore::fromDsn($dsn);
        $key = new Key($this->key());
        $store->save($key);
        $this->assertTrue($store->exists($key));
    }

    public function testBadDsnIsRefused(): void
    {
        $this->expectException(InvalidArgumentException::class);
        PkLockStore::fromDsn('redis://localhost:6379');
    }

    public function testDsnWithABadNodeListIsRefused(): void
    {
        $this->expectException(InvalidArgumentException::class);
        $this->expectExceptionMessage('bad port');
        PkLockStore::fromDsn('pklock://lockd1:11300,lockd2:x');
    }

    // --- shared locks ---------------------------------------------------------------

    public function testManyReadersOrOneWriter(): void
    {
        $store = $this->store();
        $resource = $this->key();
        [$reader1, $reader2, $writer] = [new Key($resource), new Key($resource), new Key($resource)];

        $store->saveRead($reader1);
        $store->saveRead($reader2);
        $this->assertTrue($store->exists($reader1));
        $this->assertTrue($store->exists($reader2));
        $this->assertConflicts(fn () => $store->save($writer), 'a writer conflicts with readers');

        $store->delete($reader1);
        $store->delete($reader2);
        $store->save($writer);
        $this->assertConflicts(fn () => $store->saveRead($reader1), 'a reader conflicts with a writer');
        $this->assertFalse($store->exists($reader1));
    }

    public function testPromotionOfTheOnlyReaderSucceeds(): void
    {
        $store = $this->store();
        $resource = $this->key();
        $key1 = new Key($resource);
        $key2 = new Key($resource);

        $store->saveRead($key1);
        $store->save($key1);
        $this->assertTrue($store->exists($key1));
        $this->assertConflicts(fn () => $store->saveRead($key2), 'the promoted key is a writer');
        $this->assertSame('exclusive', $this->lockInfo($resource)['holders'][0]['mode']);
    }

    public function testPromotionConflictsWithAnotherReaderAndKeepsTheReadLock(): void
    {
        $store = $this->store();
        $resource = $this->key();
        $key1 = new Key($resource);
        $key2 = new Key($resource);

        $store->saveRead($key1);
        $store->saveRead($key2);
        $this->assertConflicts(fn () => $store->save($key1), 'promotion with another reader present');
        $this->assertTrue($store->exists($key1), 'the failed promotion keeps the read lock');
        $this->assertTrue($store->exists($key2));

        $store->delete($key2);
        $store->save($key1);
        $this->assertSame('exclusive', $this->lockInfo($resource)['holders'][0]['mode']);
    }

    public function testDemotionIsImmediateAndLetsReadersIn(): void
    {
        $store = $this->store();
        $resource = $this->key();
        $key1 = new Key($resource);
        $key2 = new Key($resource);

        $store->save($key1);
        $this->assertConflicts(fn () => $store->saveRead($key2), 'readers wait for the writer');
        $store->saveRead($key1);
        $this->assertTrue($store->exists($key1));
        $store->saveRead($key2);
        $this->assertTrue($store->exists($key2));
        $this->assertSame(2, $this->holdersOf($resource));
    }

    // --- waiting across processes -----------------------------------------------------

    /** A forked child holds `$resource` through the store until the parent queues behind it. */
    private function forkStoreHolder(string $resource, bool $read = false): int
    {
        return $this->forkHolderUntilQueued($resource, function () use ($resource, $read): callable {
            $store = $this->store();
            $key = new Key($resource);
            $read ? $store->saveRead($key) : $store->save($key);

            return fn () => $store->delete($key);
        });
    }

    public function testWaitAndSaveWaitsForAForkedHolder(): void
    {
        $resource = $this->key();
        $pid = $this->forkStoreHolder($resource);

        $store = $this->store();
        $key = new Key($resource);
        $this->assertConflicts(fn () => $store->save($key), 'the child holds it');
        $store->waitAndSave($key);
        $this->assertTrue($store->exists($key));
        $this->assertSame(0, $this->reap($pid), 'the child saw the parent waiting on the server');
    }

    public function testWaitAndSaveReadWaitsForAForkedWriter(): void
    {
        $resource = $this->key();
        $pid = $this->forkStoreHolder($resource);

        $store = $this->store();
        $key = new Key($resource);
        $store->waitAndSaveRead($key);
        $this->assertTrue($store->exists($key));
        $this->assertSame('shared', $this->lockInfo($resource)['holders'][0]['mode']);
        $this->assertSame(0, $this->reap($pid));
    }

    public function testBlockingPromotionWaitsForTheOtherReader(): void
    {
        $resource = $this->key();
        $pid = $this->forkStoreHolder($resource, read: true);

        $store = $this->store();
        $key = new Key($resource);
        $store->saveRead($key);
        $store->waitAndSave($key);
        $this->assertTrue($store->exists($key));
        $info = $this->lockInfo($resource);
        $this->assertCount(1, $info['holders']);
        $this->assertSame('exclusive', $info['holders'][0]['mode']);
        $this->assertSame(0, $this->reap($pid));
    }

    public function testTwoReadersPromotingAtOnceIsADeadlockReportedAsAConflict(): void
    {
        $resource = $this->key();
        $store = $this->store();
        $key = new Key($resource);
        $store->saveRead($key);

        $pid = $this->fork(function () use ($resource): void {
            $store = $this->store();
            $key = new Key($resource);
            $store->saveRead($key);
            $store->waitAndSave($key); // waits for the parent's read lock
            if (!$store->exists($key)) {
                throw new \RuntimeException('the child was not promoted');
            }
            $store->delete($key);
        });
        $this->waitUntil(fn () => $this->waitersOn($resource) === 1, "the child's promotion is queued");

        $this->assertConflicts(fn () => $store->waitAndSave($key), 'the second promotion closes a cycle');
        $this->assertTrue($store->exists($key), 'the refused promotion keeps the read lock');
        $store->delete($key);
        $this->assertSame(0, $this->reap($pid), 'the child is promoted once the parent left');
    }

    public function testKillingTheHolderReleasesToTheWaiter(): void
    {
        $resource = $this->key();
        $holder = $this->phpChild(sprintf(
            '$key = new Symfony\Component\Lock\Key(%s); $store->save($key); echo "locked\n"; sleep(60);',
            var_export($resource, true)
        ));
        $this->assertSame('locked', $holder->readLine());

        $waiter = $this->phpChild(sprintf(
            '$key = new Symfony\Component\Lock\Key(%s); $store->waitAndSave($key);'
            . ' echo $store->exists($key) ? "acquired\n" : "not held\n";',
            var_export($resource, true)
        ));
        $this->waitUntil(fn () => $this->waitersOn($resource) === 1, 'the waiter is queued');

        $holder->kill();
        $this->assertSame('acquired', $waiter->readLine());
        $this->assertSame(0, $waiter->wait());
    }

    /** A loopback port nobody listens on (bound and closed again). */
    private function assertConflicts(callable $save, string $why): void
    {
        try {
            $save();
        } catch (LockConflictedException $e) {
            $this->addToAssertionCount(1);
            return;
        }
        $this->fail("expected a LockConflictedException: {$why}");
    }
}
