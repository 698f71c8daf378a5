<?php

// When lockd goes away: refused connections, a restart reported on the next call of every
// object that held locks (and only then a new connection), silent reconnects for objects that
// held nothing, and a waiter that notices a dead server instead of hanging.

declare(strict_types=1);

namespace PkLock\Tests;

use PkLockClient;
use PkLockConnectionException;
use PkLockLostException;

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
