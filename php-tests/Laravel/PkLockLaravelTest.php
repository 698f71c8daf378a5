<?php

// Laravel's Cache::lock() contract on lockd (PkLock\Laravel\PkLockStore / PkLockLock), against
// Debian's php-laravel-framework (8.83) and a real lockd: acquire and release, owners,
// block() waiting on the server, get() with a callback, process death, lost connections,
// and the features that cannot map onto connection-bound locks (restoreLock in another
// process, forceRelease of another process's lock). Skipped, saying why, without Laravel.

declare(strict_types=1);

namespace PkLock\Tests\Laravel;

use Illuminate\Cache\CacheManager;
use Illuminate\Config\Repository as Config;
use Illuminate\Container\Container;
use Illuminate\Contracts\Cache\LockProvider;
use Illuminate\Contracts\Cache\LockTimeoutException;
use PkLock\Laravel\LockHeldElsewhereException;
use PkLock\Laravel\PkLockServiceProvider;
use PkLock\Laravel\PkLockStore;
use PkLock\Tests\PhpChild;
use PkLock\Tests\PkLockTestCase;

final class PkLockLaravelTest extends PkLockTestCase
{
    protected function setUp(): void
    {
        if (!interface_exists(LockProvider::class)) {
            $this->markTestSkipped('Laravel is not installed (apt-get install php-laravel-framework)');
        }
    }

    private function store(): PkLockStore
    {
        return new PkLockStore(self::$server->host(), self::$server->port());
    }

    /** A child PHP with the test autoloading and `$store`, a PkLockStore for this lockd. */
    private function laravelChild(string $code): PhpChild
    {
        $prelude = sprintf(
            "require %s;\n\$store = new PkLock\\Laravel\\PkLockStore(%s, %d);\n",
            var_export(dirname(__DIR__) . '/bootstrap.php', true),
            var_export(self::$server->host(), true),
            self::$server->port()
        );

        return PhpChild::start($prelude . $code);
    }

    /** A child that takes `$key` through the Laravel store and holds it until killed. */
    private function childHolding(string $key): PhpChild
    {
        $child = $this->laravelChild(sprintf(
            'echo $store->lock(%s)->get() ? "held\n" : "refused\n"; sleep(60);',
            var_export($key, true)
        ));
        $this->assertSame('held', $child->readLine());

        return $child;
    }

    public function testGetTakesTheLockInLockdAndReleaseFreesIt(): void
    {
        $key = $this->key();
        $lock = $this->store()->lock($key, 10);

        $this->assertTrue($lock->get());
        $this->assertSame(1, $this->holdersOf($key));

        $this->assertTrue($lock->release());
        $this->waitUntil(fn () => $this->holdersOf($key) === 0, 'lockd sees the lock released');
        $this->assertFalse($lock->release(), 'a second release has nothing to release');
    }

    public function testASecondOwnerIsRefusedInThisProcessAndInAnother(): void
    {
        $key = $this->key();
        $store = $this->store();
        $this->assertTrue($store->lock($key)->get());

        $this->assertFalse($store->lock($key)->get(), 'another owner of this process');
        $this->assertFalse($this->store()->lock($key)->get(), 'another store of this process');
        $child = $this->laravelChild(sprintf('var_export($store->lock(%s)->get()); echo "\n";', var_export($key, true)));
        $this->assertSame('false', $child->readLine(), 'another process');
    }

    public function testTheSameOwnerDoesNotAcquireTwiceAsLaravelsDriversAnswer(): void
    {
        $key = $this->key();
        $store = $this->store();

        $this->assertTrue($store->lock($key, 0, 'worker-1')->get());
        $this->assertFalse($store->lock($key, 0, 'worker-1')->get());
        $this->assertTrue($store->lock($key, 0, 'worker-1')->release(), 'any lock object of the owner releases it');
        $this->assertTrue($store->lock($key, 0, 'worker-2')->get());
    }

    public function testBlockWaitsOnTheServerUntilAnotherProcessReleases(): void
    {
        $key = $this->key();
        // The child releases only once lockd shows a waiter queued on the key: a block() that
        // polled instead of waiting on the server would never be seen, and would time out.
        $child = $this->laravelChild(sprintf(
            '$key = %s; $lock = $store->lock($key); $lock->get(); echo "held\n";
            $observer = new PkLockClient(%s, %d);
            $deadline = microtime(true) + 20;
            do {
                $waiters = 0;
                foreach ($observer->rpc("locks", ["prefix" => $key])["keys"] as $info) {
                    $waiters += $info["key"] === $key ? count($info["waiters"]) : 0;
                }
                usleep(10000);
            } while ($waiters === 0 && microtime(true) < $deadline);
            echo $waiters > 0 && $lock->release() ? "released to a waiter\n" : "saw no waiter\n";
            sleep(60);',
            var_export($key, true),
            var_export(self::$server->host(), true),
            self::$server->port()
        ));
        $this->assertSame('held', $child->readLine());

        $lock = $this->store()->lock($key);
        $this->assertTrue($lock->block(30));

        $this->assertSame('released to a waiter', $child->readLine());
        $this->assertSame(1, $this->holdersOf($key));
        $this->assertTrue($lock->release());
    }

    public function testBlockThrowsLockTimeoutExceptionWhenTheWaitRunsOut(): void
    {
        $key = $this->key();
        $holder = $this->childHolding($key);

        $lock = $this->store()->lock($key);
        try {
            $lock->block(1, fn () => $this->fail('the callback must not run without the lock'));
            $this->fail('block() returned without the lock');
        } catch (LockTimeoutException $e) {
            $this->assertStringContainsString($key, $e->getMessage());
        }
        $this->assertSame(0, $this->waitersOn($key), 'the timed-out wait left no waiter behind');
        $holder->kill();
    }

    public function testGetWithACallbackRunsItHoldingTheLockAndReleases(): void
    {
        $key = $this->key();
        $store = $this->store();

        $result = $store->lock($key)->get(fn () => [$this->holdersOf($key), $store->lock($key)->get()]);

        $this->assertSame([1, false], $result, 'held while the callback ran');
        $this->assertTrue($store->lock($key)->get(), 'released after it');
    }

    public function testGetWithACallbackReleasesWhenItThrows(): void
    {
        $key = $this->key();
        $store = $this->store();

        try {
            $store->lock($key)->get(fn () => throw new \DomainException('job failed'));
            $this->fail('the exception was swallowed');
        } catch (\DomainException $e) {
            $this->assertSame('job failed', $e->getMessage());
        }
        $this->assertTrue($store->lock($key)->get());
    }

    public function testBlockWithACallbackReturnsItsResultAndReleases(): void
    {
        $key = $this->key();
        $store = $this->store();

        $this->assertSame('done', $store->lock($key)->block(5, fn () => 'done'));
        $this->assertTrue($store->lock($key)->get());
    }

    public function testTheDeathOfTheHoldingProcessReleasesTheLock(): void
    {
        $key = $this->key();
        $holder = $this->childHolding($key);
        $lock = $this->store()->lock($key, 3600);
        $this->assertFalse($lock->get());

        $holder->kill();

        $this->assertTrue($lock->block(30), 'granted once lockd saw the holder die');
    }

    public function testLocksLostWithTheConnectionAreSaidSoOnceAndForgotten(): void
    {
        $store = $this->store();
        $this->assertTrue($store->lock($this->key('a'), 0, 'worker')->get());

        self::$server->restart();

        try {
            $store->lock($this->key('b'), 0, 'worker')->get();
            $this->fail('the lost lock went unnoticed');
        } catch (\PkLockLostException) {
        }
        $this->assertTrue($store->lock($this->key('a'), 0, 'worker')->get(), 'the owner starts afresh');
        $this->assertSame(1, $this->holdersOf($this->key('a')));
    }

    public function testRestoreLockReleasesTheOwnersLockInThisProcess(): void
    {
        $key = $this->key();
        $store = $this->store();
        $owner = $store->lock($key, 60)->owner();
        $this->assertTrue($store->lock($key, 60, $owner)->get());

        $this->assertFalse($store->restoreLock($key, 'someone-else')->release());
        $this->assertSame(1, $this->holdersOf($key));
        $this->assertTrue($store->restoreLock($key, $owner)->release());
        $this->waitUntil(fn () => $this->holdersOf($key) === 0, 'lockd sees the restored lock released');
    }

    public function testRestoreLockInAnotherProcessCannotReleaseAndSaysSo(): void
    {
        $key = $this->key();
        $lock = $this->store()->lock($key);
        $this->assertTrue($lock->get());

        $child = $this->laravelChild(sprintf(
            'var_export($store->restoreLock(%s, %s)->release()); echo "\n";',
            var_export($key, true),
            var_export($lock->owner(), true)
        ));

        $this->assertSame('false', $child->readLine());
        $this->assertSame(0, $child->wait());
        $this->assertSame(1, $this->holdersOf($key), 'still held by this process');
    }

    public function testForceReleaseFreesAnotherOwnersLockOfThisProcess(): void
    {
        $key = $this->key();
        $store = $this->store();
        $this->assertTrue($store->lock($key)->get());

        $store->lock($key)->forceRelease();

        $this->assertTrue($store->lock($key)->get());
    }

    public function testForceReleaseOfAFreeLockDoesNothing(): void
    {
        $key = $this->key();
        $store = $this->store();

        $store->lock($key)->forceRelease();

        $this->assertSame(0, $this->holdersOf($key));
        $this->assertTrue($store->lock($key)->get());
    }

    public function testForceReleaseOfAnotherProcesssLockThrowsAndLeavesItHeld(): void
    {
        $key = $this->key();
        $holder = $this->childHolding($key);

        try {
            $this->store()->lock($key)->forceRelease();
            $this->fail('forceRelease() claimed to release another process\'s lock');
        } catch (LockHeldElsewhereException $e) {
            $this->assertSame($key, $e->lockName);
        }
        $this->assertSame(1, $this->holdersOf($key));
        $holder->kill();
    }

    public function testTheServiceProviderRegistersThePklockCacheDriver(): void
    {
        $key = $this->key();
        $app = new Container();
        $app->instance('config', new Config(['cache' => [
            'default' => 'pklock',
            'stores' => [
                'pklock' => ['driver' => 'pklock', 'host' => self::$server->host(), 'port' => (string) self::$server->port(), 'values_store' => 'array'],
                'array' => ['driver' => 'array'],
            ],
        ]]));
        $app->instance('cache', new CacheManager($app));
        (new PkLockServiceProvider($app))->boot();

        $cache = $app->make('cache');
        $lock = $cache->lock($key);

        $this->assertTrue($lock->get());
        $this->assertSame(1, $this->holdersOf($key));
        $this->assertTrue($lock->release());
        $cache->put('answer', 42, 60);
        $this->assertSame(42, $cache->store('array')->get('answer'), 'values go to the values store');
    }
}
