<?php

// PkLockClient in one process: lock/unlock, try-lock, waits that run out, tokens, isHeld(), modes,
// several keys, objects as separate owners, release on destruct, synchronized(), and the
// connection-state methods.

declare(strict_types=1);

namespace PkLock\Tests;

use PkLockClient;
use PkLockTimeoutException;
use RuntimeException;

final class LockTest extends PkLockTestCase
{
    public function testLockThenUnlockLetsAnotherOwnerIn(): void
    {
        $key = $this->key();
        $first = $this->client();
        $second = $this->client();

        $this->assertTrue($first->lock($key));
        $this->assertFalse($second->lock($key, 0));
        $this->assertTrue($first->unlock($key));
        $this->assertTrue($second->lock($key, 0));
    }

    public function testTwoObjectsInOneProcessConflictLikeTwoProcesses(): void
    {
        $key = $this->key();
        $first = $this->client();
        $second = $this->client();

        $this->assertTrue($first->lock($key, 0));
        $this->assertFalse($second->lock($key, 0));
        $this->assertSame(1, $this->holdersOf($key));
        $this->assertFalse($second->unlock($key), 'an object cannot release what another holds');
        $this->assertSame(1, $this->holdersOf($key));
    }

    public function testArgumentsCanBeNamed(): void
    {
        $key = $this->key();
        $client = $this->client();

        $this->assertTrue($client->lock(keys: $key, shared: true, wait: 0));
        $this->assertSame(7, $client->synchronized($this->key('other'), fn: fn () => 7, wait: 1.5));
    }

    public function testWaitThatRunsOutReturnsFalse(): void
    {
        $key = $this->key();
        $holder = $this->client();
        $holder->lock($key);

        $this->assertFalse($this->client()->lock($key, 0.2));
        $this->assertSame(0, $this->waitersOn($key), 'a waiter that gave up has left the queue');
    }

    public function testTokensIncreaseWithEveryGrant(): void
    {
        $key = $this->key();
        $client = $this->client();

        $this->assertNull($client->token($key));
        $client->lock($key);
        $first = $client->token($key);
        $client->unlock($key);
        $client->lock($key);
        $second = $client->token($key);
        $client->lock($key);
        $relocked = $client->token($key);

        $this->assertIsInt($first);
        $this->assertGreaterThan($first, $second);
        $this->assertGreaterThan($second, $relocked, 're-locking a held key gives a new token');
        $client->unlock($key);
        $this->assertNull($client->token($key));
    }

    public function testIsHeldAsksTheServerAboutThisObjectsOwnLocks(): void
    {
        $key = $this->key();
        $client = $this->client();
        $other = $this->client();

        $this->assertFalse($client->isHeld($key), 'nothing taken yet');
        $client->lock($key);
        $this->assertTrue($client->isHeld($key));
        $this->assertFalse($other->isHeld($key), 'held, but by another object');
        $this->assertTrue($other->lock($this->key('shared'), 0, shared: true));
        $this->assertTrue($client->lock($this->key('shared'), 0, shared: true));
        $this->assertTrue($other->isHeld($this->key('shared')) && $client->isHeld($this->key('shared')));
        $client->unlock($key);
        $this->assertFalse($client->isHeld($key));
    }

    public function testIsHeldBelievesTheServerNotWhatTheObjectRemembers(): void
    {
        $key = $this->key();
        $client = $this->client();
        $client->lock($key);
        // Release it behind the object's back: rpc() on the same connection, as its owner.
        $owner = $this->lockInfo($key)['holders'][0]['owner'];
        $this->client()->rpc('unlock', ['keys' => $key, 'owner' => $owner]);

        $this->assertFalse($client->isHeld($key));
        $this->assertNull($client->token($key), 'no token handed out for a lock the server says is gone');
    }

    public function testSharedLocksCoexistAndExcludeExclusive(): void
    {
        $key = $this->key();
        $reader1 = $this->client();
        $reader2 = $this->client();
        $writer = $this->client();

        $this->assertTrue($reader1->lock($key, 0, true));
        $this->assertTrue($reader2->lock($key, 0, true));
        $this->assertFalse($writer->lock($key, 0));
        $reader1->unlock($key);
        $this->assertFalse($writer->lock($key, 0));
        $reader2->unlock($key);
        $this->assertTrue($writer->lock($key, 0));
        $this->assertFalse($reader1->lock($key, 0, true));
    }

    public function testUpgradeWaitsForOtherReadersAndDowngradeIsImmediate(): void
    {
        $key = $this->key();
        $upgrader = $this->client();
        $reader = $this->client();
        $upgrader->lock($key, 0, true);
        $reader->lock($key, 0, true);
        $sharedToken = $upgrader->token($key);

        $this->assertFalse($upgrader->lock($key, 0), 'shared -> exclusive waits for the other reader');
        $this->assertSame($sharedToken, $upgrader->token($key), 'a refused upgrade keeps the shared lock');
        $reader->unlock($key);
        $this->assertTrue($upgrader->lock($key, 0));
        $this->assertFalse($reader->lock($key, 0, true));

        $this->assertTrue($upgrader->lock($key, 0, true), 'exclusive -> shared is immediate');
        $this->assertTrue($reader->lock($key, 0, true));
    }

    public function testSeveralKeysAreAllOrNothing(): void
    {
        [$a, $b, $c] = [$this->key('a'), $this->key('b'), $this->key('c')];
        $holder = $this->client();
        $holder->lock($b);
        $wanting = $this->client();

        $this->assertFalse($wanting->lock([$a, $b, $c], 0));
        $this->assertNull($wanting->token($a));
        $this->assertSame(0, $this->holdersOf($a), 'no key of a refused request is held');

        $holder->unlock($b);
        $this->assertTrue($wanting->lock([$a, $b, $c], 0));
        $token = $wanting->token($a);
        $this->assertSame([$token, $token], [$wanting->token($b), $wanting->token($c)], 'one token for the grant');
        $this->assertTrue($wanting->unlock([$a, $b, $c]));
        $this->assertTrue($holder->lock([$a, $c], 0));
    }

    public function testUnlockAllReleasesEveryKeyOfThisObjectOnly(): void
    {
        [$a, $b, $other] = [$this->key('a'), $this->key('b'), $this->key('other')];
        $client = $this->client();
        $neighbour = $this->client();
        $client->lock($a);
        $client->lock($b, 0, true);
        $neighbour->lock($other);

        $client->unlockAll();

        $this->assertNull($client->token($a));
        $this->assertSame(0, $this->holdersOf($a) + $this->holdersOf($b));
        $this->assertSame(1, $this->holdersOf($other));
    }

    public function testDestroyingAnObjectReleasesItsLocks(): void
    {
        $key = $this->key();
        $holder = $this->client();
        $holder->lock($key);

        unset($holder);

        $this->assertTrue($this->client()->lock($key, 0));
    }

    public function testSynchronizedReturnsTheCallablesValueAndUnlocks(): void
    {
        $key = $this->key();
        $client = $this->client();

        $result = $client->synchronized($key, function () use ($client, $key): array {
            return ['token' => $client->token($key), 'nested' => [1.5]];
        });

        $this->assertIsInt($result['token']);
        $this->assertSame([1.5], $result['nested']);
        $this->assertNull($client->token($key));
        $this->assertSame(0, $this->holdersOf($key));
    }

    public function testSynchronizedUnlocksWhenTheCallableThrows(): void
    {
        $key = $this->key();
        $client = $this->client();

        try {
            $client->synchronized([$key], function (): void {
                throw new RuntimeException('from the callable');
            });
            $this->fail('the exception should propagate');
        } catch (RuntimeException $e) {
            $this->assertSame('from the callable', $e->getMessage());
        }
        $this->assertSame(0, $this->holdersOf($key));
        $this->assertTrue($this->client()->lock($key, 0));
    }

    public function testSynchronizedThrowsTimeoutWhenTheWaitRunsOut(): void
    {
        $key = $this->key();
        $holder = $this->client();
        $holder->lock($key);
        $ran = false;

        $this->expectException(PkLockTimeoutException::class);
        try {
            $this->client()->synchronized($key, function () use (&$ran): void {
                $ran = true;
            }, 0);
        } finally {
            $this->assertFalse($ran);
        }
    }

    public function testUnlockOfWhatIsNotHeldIsFalse(): void
    {
        $key = $this->key();
        $client = $this->client();

        $this->assertFalse($client->unlock($key));
        $client->lock($key);
        $this->assertFalse($client->unlock([$key, $this->key('never')]), 'false: one of the keys was not held');
        $this->assertNull($client->token($key), 'the held one is released all the same');
    }

    public function testAProblemWithOneObjectsUnlockIsReportedToThatObjectOnly(): void
    {
        $key = $this->key();
        $a = $this->client();
        $b = $this->client();
        $this->assertTrue($a->lock($key));
        // Someone takes a's lock away behind its back (a raw rpc naming a's owner handle).
        $listing = $b->rpc('locks', ['prefix' => $key]);
        $owner = $listing['keys'][0]['holders'][0]['owner'];
        $b->rpc('unlock', ['keys' => $key, 'owner' => $owner]);
        $a->unlock($key); // pipelined: the server will answer "not held"

        $this->assertTrue($b->lock($this->key('other')), 'b is not told about a\'s problem');
        $this->expectException(\PkLockLostException::class);
        $a->lock($this->key('again'));
    }

    public function testAnEarlierUnlockProblemDoesNotStopTheNextUnlock(): void
    {
        $first = $this->key('first');
        $second = $this->key('second');
        $a = $this->client();
        $this->assertTrue($a->lock([$first]));
        $this->assertTrue($a->lock([$second]));
        $owner = $this->client()->rpc('locks', ['prefix' => $first])['keys'][0]['holders'][0]['owner'];
        $this->client()->rpc('unlock', ['keys' => $first, 'owner' => $owner]);
        $a->unlock($first); // its reply will say "not held"
        // It arrives with the next reply the server must send: this lock's.
        $this->assertTrue($a->lock($this->key('third')));
        try {
            $a->unlock($second);
            $this->fail('the earlier problem is reported');
        } catch (\PkLockLostException $e) {
            $this->assertStringContainsString($first, $e->getMessage());
        }
        $this->assertNull($a->token($second));
        $this->assertTrue($this->client()->lock($second, 0), 'released all the same');
    }

    public function testConstructingNeedsNoServerAndCloseDisconnects(): void
    {
        $nowhere = new PkLockClient('127.0.0.1', 1);
        $this->assertFalse($nowhere->isConnected());

        $client = $this->client();
        $client->rpc('ping');
        $this->assertTrue($client->isConnected());
        $client->close();
        $this->assertFalse($client->isConnected());
        $this->assertTrue($client->lock($this->key(), 0), 'a closed client reconnects on use');
    }

    public function testObjectsShareOneConnectionPerProcess(): void
    {
        $key = $this->key();
        $first = $this->client();
        $second = $this->client();
        $first->lock($key . '1');
        $second->lock($key . '2');

        $connections = array_map(
            fn (array $info): int => $info['holders'][0]['connection'],
            $this->client()->rpc('locks', ['prefix' => $key])['keys']
        );

        $this->assertCount(2, $connections);
        $this->assertSame($connections[0], $connections[1]);
    }
}
