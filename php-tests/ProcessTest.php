<?php

// PkLockClient across processes: FIFO order of waiters, deadlock between two processes, and a
// holder killed with SIGKILL handing its lock to a waiter.

declare(strict_types=1);

namespace PkLock\Tests;

use PkLockDeadlockException;

final class ProcessTest extends PkLockTestCase
{
    public function testWaitersFromSeveralProcessesAreGrantedInArrivalOrder(): void
    {
        $key = $this->key();
        $holder = $this->client();
        $holder->lock($key);
        $children = [];
        foreach ([1, 2, 3] as $arrival) {
            $children[$arrival] = $this->child(sprintf(
                '$client->lock(%s, 60); echo $client->token(%1$s), "\n"; $client->unlock(%1$s);',
                var_export($key, true)
            ));
            $this->waitUntil(fn (): bool => $this->waitersOn($key) === $arrival, "waiter {$arrival} queues");
        }

        $holder->unlock($key);

        $tokens = array_values(array_map(fn (PhpChild $child): int => (int) $child->readLine(), $children));
        $this->assertSame($tokens, array_values(array_unique($tokens)));
        $sorted = $tokens;
        sort($sorted);
        $this->assertSame($sorted, $tokens, 'grants (tokens) follow arrival order');
        foreach ($children as $child) {
            $this->assertSame(0, $child->wait());
        }
    }

    public function testDeadlockBetweenTwoProcessesIsRefusedWithItsOwnException(): void
    {
        [$x, $y] = [$this->key('x'), $this->key('y')];
        $client = $this->client();
        $client->lock($x);
        // The child takes y, waits until we queue for y, then asks for x: that closes the cycle.
        $child = $this->child(sprintf(
            <<<'PHP'
                [$x, $y] = [%s, %s];
                $client->lock($y);
                echo "holding y\n";
                $observer = new PkLockClient(%s, %d);
                do {
                    usleep(10000);
                    $info = $observer->rpc('locks', ['prefix' => $y])['keys'][0] ?? ['waiters' => []];
                } while (count($info['waiters']) === 0);
                try {
                    $client->lock($x, 30);
                    echo "granted\n";
                } catch (PkLockException $e) {
                    echo get_class($e), "\n";
                }
                PHP,
            var_export($x, true),
            var_export($y, true),
            var_export(self::$server->host(), true),
            self::$server->port()
        ));
        $this->assertSame('holding y', $child->readLine());

        $granted = $client->lock($y, 30);

        $this->assertSame(PkLockDeadlockException::class, $child->readLine());
        $this->assertTrue($granted, 'once the child gave up (and exited), we get y');
        $this->assertSame(0, $child->wait());
    }

    public function testKillingAHolderHandsItsLockToAWaiter(): void
    {
        $key = $this->key();
        $child = $this->child(sprintf(
            '$client->lock(%s); echo "locked\n"; sleep(600);',
            var_export($key, true)
        ));
        $this->assertSame('locked', $child->readLine());
        $waiter = $this->client();
        $this->assertFalse($waiter->lock($key, 0));

        $child->kill();

        $this->assertTrue($waiter->lock($key, 30));
    }
}
