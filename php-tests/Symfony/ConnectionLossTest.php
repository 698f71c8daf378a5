<?php

// PkLockStore when the connection to lockd breaks while a key holds a lock (lockd restarted
// under it): the lock is never reported as still acquired, refresh and release behave, and a
// new acquire works on a fresh connection. Its own test class because it restarts lockd.

declare(strict_types=1);

namespace PkLock\Tests\Symfony;

use Symfony\Component\Lock\Exception\LockConflictedException;
use Symfony\Component\Lock\Key;

final class ConnectionLossTest extends SymfonyTestCase
{
    public function testALostConnectionIsNotReportedAsStillAcquired(): void
    {
        $store = $this->store();
        $key = new Key($this->key());
        $store->save($key);
        $this->assertTrue($store->exists($key));

        self::$server->restart();

        $this->assertFalse($store->exists($key), 'the server released the lock with the connection');
        $this->assertFalse($store->exists($key));
        $store->delete($key); // nothing left to release: no error
        try {
            $store->putOffExpiration($key, 300.0);
            $this->fail('refreshing a lost lock must conflict');
        } catch (LockConflictedException $e) {
        }

        $store->save($key);
        $this->assertTrue($store->exists($key), 'a new acquire works on a new connection');
    }

    public function testRefreshNoticesTheLossWithoutARoundTrip(): void
    {
        $lock = $this->factory()->createLock($this->key());
        $this->assertTrue($lock->acquire());

        self::$server->restart();

        try {
            $lock->refresh();
            $this->fail('refresh() of a lost lock must throw');
        } catch (LockConflictedException $e) {
        }
        $this->assertFalse($lock->isAcquired());
        $lock->release();
        $this->assertTrue($lock->acquire(), 'acquiring again works on a new connection');
    }
}
