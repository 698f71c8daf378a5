<?php

// PkLockMutex when the connection to lockd breaks while the code runs (lockd restarted under
// it): synchronized() must not pretend exclusion held; it throws a LockReleaseException that
// carries the code's result, and the next synchronized() works on a new connection. Its own
// test class because it restarts lockd.

declare(strict_types=1);

namespace PkLock\Tests\Mutex;

use malkusch\lock\exception\LockReleaseException;
use PkLock\Mutex\PkLockMutex;
use PkLock\Tests\PkLockTestCase;


final class MutexConnectionLossTest extends PkLockTestCase
{
    public function testLosingTheLockWhileTheCodeRunsIsReported(): void
    {
        $mutex = new PkLockMutex($this->key(), 5.0, $this->client());

        try {
            $mutex->synchronized(function (): string {
                self::$server->restart();
                return 'result';
            });
            $this->fail('a lock lost while held must be reported');
        } catch (LockReleaseException $e) {
            $this->assertSame('result', $e->getCodeResult());
            $this->assertInstanceOf(\PkLockLostException::class, $e->getPrevious());
        }

        $this->assertSame('again', $mutex->synchronized(fn () => 'again'));
    }
}
