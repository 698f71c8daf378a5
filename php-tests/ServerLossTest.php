<?php

// When lockd goes away: refused connections, a restart reported on the next call of every
// object that held locks (and only then a new connection), silent reconnects for objects that
// held nothing, a connection closed over another object's slow reply reported to every holder,
// a waiter that notices a dead server instead of hanging, and a wait ended by shutting_down.

declare(strict_types=1);

namespace PkLock\Tests;

use PkLockClient;
use PkLockConnectionException;
use PkLockLostException;
use PkLockShuttingDownException;

final class ServerLossTest extends PkLockTestCase
{
    public function testRefusedConnectionIsAConnectionException(): void
    {
        $port = self::$server->port();
        self::$server->stop();
        try {
            $this->expectException(PkLockConnectionException::class);
            $this->expectExceptionMessage("cannot connect to lockd at 127.0.0.1:{$port}");
            (new PkLockClient('127.0.0.1', $port))->lock($this->key(), 0);
        } finally {
            self::$server->restart();
        }
    }

    public function testRestartIsReportedOnTheNextCallThenTheClientReconnects(): void
    {
        $key = $this->key();
        $client = $this->client();
        $client->lock($key);

        self::$server->restart();

        try {
            $client->lock($this->key('other'), 0);
            $this->fail('the next call must say the locks are gone');
        } catch (PkLockLostException $e) {
            $this->assertStringContainsString('the server released the locks this process held', $e->getMessage());
            $this->assertStringContainsString($key, $e->getMessage());
        }
        $this->assertNull($client->token($key));
        $this->assertTrue($client->lock($key, 0), 'after the exception, calls reconnect');
    }

    public function testEveryObjectThatHeldLocksLearnsOfTheLossAndOthersCarryOn(): void
    {
        $holder = $this->client();
        $bystander = $this->client();
        $holder->lock($this->key());
        $bystander->rpc('ping');

        self::$server->restart();

        $this->assertFalse($bystander->isConnected(), 'isConnected() notices the closed connection');
        $this->assertSame(['pong' => true], $bystander->rpc('ping'), 'an object that held nothing reconnects silently');
        $this->expectException(PkLockLostException::class);
        $holder->unlock($this->key());
    }

    /**
     * SIGTERM while a process waits behind a holder: the waiter hears shutting_down, and is
     * never told it got a lock that the shutdown takes away.
     */
    public function testAServerShutdownNeverGrantsAWaiter(): void
    {
        $key = $this->key('crit');
        $holder = $this->client();
        $this->assertTrue($holder->lock($key, 0));
        $waiter = $this->child(sprintf(
            <<<'PHP'
                try {
                    var_export($client->lock(%s, 30));
                } catch (PkLockException $e) {
                    echo get_class($e);
                }
                echo "\n";
                PHP,
            var_export($key, true)
        ));
        $this->waitUntil(fn (): bool => $this->waitersOn($key) === 1, 'the child waits');
        self::$server->stop();
        try {
            $this->assertSame('PkLockShuttingDownException', $waiter->readLine());
        } finally {
            self::$server->restart();
        }
    }

    /** @return array<string, array{callable(PkLockClient, string): mixed}> */
    public static function holdersNextCalls(): array
    {
        return [
            'lock' => [fn (PkLockClient $client, string $key) => $client->lock($key . ':another', 0)],
            'unlock' => [fn (PkLockClient $client, string $key) => $client->unlock($key)],
            'unlockAll' => [fn (PkLockClient $client, string $key) => $client->unlockAll()],
            'token' => [fn (PkLockClient $client, string $key) => $client->token($key)],
            'isHeld' => [fn (PkLockClient $client, string $key) => $client->isHeld($key)],
        ];
    }

    /**
     * The issue's scenario: a holder of "crit" whose process closes the shared connection
     * because another object's reply was slow must not carry on as if it still held "crit".
     *
     * @dataProvider holdersNextCalls
     */
    public function testAConnectionClosedOverAnotherObjectsSlowReplyIsALossForTheHolder(callable $nextCall): void
    {
        $key = $this->key('crit');
        $holder = $this->client();
        $this->assertTrue($holder->lock($key, 0));
        $impatient = $this->client(['io_timeout' => 0.3]);

        self::$server->pause();
        try {
            $impatient->rpc('ping');
            $this->fail('a stalled server does not answer');
        } catch (PkLockConnectionException $e) {
            $this->assertNotInstanceOf(PkLockLostException::class, $e, 'the impatient object held nothing');
            $this->assertStringContainsString('no reply within 0.300 s', $e->getMessage());
        } finally {
            self::$server->resume();
        }
        $this->waitUntil(fn (): bool => $this->holdersOf($key) === 0, 'lockd released the lock of the closed connection');

        try {
            $nextCall($holder, $key);
            $this->fail('the holder must learn that its lock is gone');
        } catch (PkLockLostException $e) {
            $this->assertStringContainsString($key, $e->getMessage());
        }
        $this->assertNull($holder->token($key), 'reported once; the lost lock has no token');
        $this->assertFalse($holder->isHeld($key));
    }

    public function testAWaitAnsweredWithShuttingDownIsAShuttingDownException(): void
    {
        $fake = PhpChild::script(__DIR__ . '/fixtures/fake-lockd.php', 'shutting-down');
        $client = new PkLockClient('127.0.0.1', (int) $fake->readLine());

        $this->expectException(PkLockShuttingDownException::class);
        $this->expectExceptionMessage('shutting_down');
        $client->lock($this->key(), null);
    }

    public function testAWaiterNoticesWhenTheServerDies(): void
    {
        $key = $this->key();
        $holder = $this->client();
        $holder->lock($key);
        $waiter = $this->child(sprintf(
            'try { $client->lock(%s, null); echo "granted\n"; } catch (PkLockException $e) { echo get_class($e), "\n"; }',
            var_export($key, true)
        ));
        $this->waitUntil(fn (): bool => $this->waitersOn($key) === 1, 'the child waits');

        self::$server->kill();

        try {
            $this->assertSame(PkLockConnectionException::class, $waiter->readLine());
        } finally {
            self::$server->restart();
        }
    }
}
