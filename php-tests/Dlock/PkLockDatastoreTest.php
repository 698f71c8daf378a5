<?php

// Dlock's datastore interface on lockd (PkLock\Dlock\PkLockDatastore), against a real lockd:
// acquire and release, other owners refused, process death releasing, and both spellings of
// Dlock's interface (acquireLock since 0.0.3, aquireLock before). Dlock itself is not in
// Debian: its interface is the fixture php-tests/fixtures/Dlock/.

declare(strict_types=1);

namespace PkLock\Tests\Dlock;

use Dlock\Datastore\DatastoreInterface;
use PkLock\Dlock\PkLockDatastore;
use PkLock\Tests\PhpChild;
use PkLock\Tests\PkLockTestCase;

final class PkLockDatastoreTest extends PkLockTestCase
{
    private function datastore(): PkLockDatastore
    {
        return new PkLockDatastore($this->client());
    }

    public function testItIsADlockDatastore(): void
    {
        $this->assertInstanceOf(DatastoreInterface::class, $this->datastore());
    }

    public function testAcquireTakesTheLockInLockdAndReleaseFreesIt(): void
    {
        $key = $this->key();
        $datastore = $this->datastore();

        $this->assertTrue($datastore->acquireLock($key));
        $this->assertSame(1, $this->holdersOf($key));

        $this->assertTrue($datastore->releaseLock($key));
        $this->waitUntil(fn () => $this->holdersOf($key) === 0, 'lockd sees the lock released');
        $this->assertFalse($datastore->releaseLock($key), 'nothing left to release');
    }

    public function testAHeldLockIsNotAcquiredAgainByAnyone(): void
    {
        $key = $this->key();
        $datastore = $this->datastore();
        $this->assertTrue($datastore->acquireLock($key));

        $this->assertFalse($datastore->acquireLock($key), 'the same datastore, as Dlock\'s datastores answer');
        $this->assertFalse($this->datastore()->acquireLock($key), 'another datastore of this process');
        $child = $this->child(sprintf(
            'require %s; var_export((new PkLock\Dlock\PkLockDatastore($client))->acquireLock(%s)); echo "\n";',
            var_export(dirname(__DIR__) . '/bootstrap.php', true),
            var_export($key, true)
        ));
        $this->assertSame('false', $child->readLine(), 'another process');
        $this->assertFalse($this->datastore()->releaseLock($key), 'another datastore cannot release it');
        $this->assertSame(1, $this->holdersOf($key));
    }

    public function testTheDeathOfTheHoldingProcessReleasesTheLock(): void
    {
        $key = $this->key();
        $holder = $this->child(sprintf(
            'require %s; $datastore = new PkLock\Dlock\PkLockDatastore($client);
            echo $datastore->acquireLock(%s) ? "held\n" : "refused\n"; sleep(60);',
            var_export(dirname(__DIR__) . '/bootstrap.php', true),
            var_export($key, true)
        ));
        $this->assertSame('held', $holder->readLine());
        $datastore = $this->datastore();
        $this->assertFalse($datastore->acquireLock($key));

        $holder->kill();

        $this->waitUntil(fn () => $this->holdersOf($key) === 0, 'lockd released the dead holder\'s lock');
        $this->assertTrue($datastore->acquireLock($key));
    }

    public function testDlockBefore003SpelledItAquireLock(): void
    {
        $key = $this->key();
        // Dlock 0.0.1/0.0.2's interface, declared before the adapter loads: PHP refuses to
        // load a class that lacks one of its interface's methods.
        $child = PhpChild::start(sprintf(
            'namespace Dlock\Datastore { interface DatastoreInterface { public function aquireLock($lockId); public function releaseLock($lockId); } }
            namespace {
                require %s;
                $datastore = new PkLock\Dlock\PkLockDatastore(new PkLockClient(%s, %d));
                $viaInterface = static fn (Dlock\Datastore\DatastoreInterface $store) => $store->aquireLock(%s);
                var_export($viaInterface($datastore)); echo "\n"; sleep(60);
            }',
            var_export(dirname(__DIR__, 2) . '/php-lib/autoload.php', true),
            var_export(self::$server->host(), true),
            self::$server->port(),
            var_export($key, true)
        ));

        $this->assertSame('true', $child->readLine());
        $this->assertSame(1, $this->holdersOf($key));
        $child->kill();
    }
}
