<?php

// Node lists: `new PkLockClient('h1:p1,h2:p2')` and the pklock.servers INI setting. Against a
// single lockd a list behaves as that lockd (a dead entry is skipped, a list with no live
// node names every node), bad lists are ValueErrors, and one list shares one connection.
// The node order (pklock.node_order): by default every process of a host takes the same
// node, however the list is written; 'list' takes the first node that answers.
// Resuming a cluster session is unit-tested against scripted nodes in
// php-ext/src/session.rs (no real cluster here).

declare(strict_types=1);

namespace PkLock\Tests;

use PkLock\Testing\LockdServer;
use PkLockClient;
use PkLockConnectionException;
use ValueError;

final class NodeListTest extends PkLockTestCase
{
    private function live(): string
    {
        return self::$server->host() . ':' . self::$server->port();
    }

    public function testAListWithADeadNodeUsesTheLiveOne(): void
    {
        $nodes = "127.0.0.1:{$this->closedPort()},{$this->live()}";
        for ($round = 0; $round < 4; $round++) {
            // The nodes are tried in random order: whichever comes first, the live one serves.
            $client = new PkLockClient($nodes, null, ['connect_timeout' => 1.0]);
            $this->assertTrue($client->lock($this->key()));
            $this->assertSame(1, $this->holdersOf($this->key()));
            $client->close();
        }
    }

    public function testAListWithoutALiveNodeNamesEveryNode(): void
    {
        [$first, $second] = [$this->closedPort(), $this->closedPort()];
        try {
            (new PkLockClient("127.0.0.1:{$first},127.0.0.1:{$second}", null, ['connect_timeout' => 1.0]))->rpc('ping');
            $this->fail('no node answers');
        } catch (PkLockConnectionException $e) {
            $this->assertStringContainsString("127.0.0.1:{$first}", $e->getMessage());
            $this->assertStringContainsString("127.0.0.1:{$second}", $e->getMessage());
        }
    }

    public function testEntriesWithoutAPortTakeThePortArgument(): void
    {
        $client = new PkLockClient("127.0.0.1:{$this->closedPort()}, " . self::$server->host(), self::$server->port());
        $this->assertSame(['pong' => true], $client->rpc('ping'));
    }

    public function testOneListSharesOneConnection(): void
    {
        $nodes = "{$this->live()},127.0.0.1:{$this->closedPort()}";
        [$a, $b] = [new PkLockClient($nodes), new PkLockClient($nodes)];
        $this->assertTrue($a->lock($this->key()));
        $this->assertFalse($b->lock($this->key(), 0), 'each object is its own owner');
        $this->assertTrue($b->isConnected(), 'through the connection $a opened');

        ob_start();
        phpinfo(INFO_MODULES);
        $info = ob_get_clean();
        $this->assertSame(1, substr_count($info, "lockd at {$nodes} => connected"), $info);
    }

    /** @return array<string, array{string, string}> */
    public static function badLists(): array
    {
        return [
            'empty entry' => ['a,,b', 'must not have an empty entry'],
            'bad port' => ['a:x', 'bad port: "a:x"'],
            'port 0' => ['a:0', 'bad port'],
            'no host' => [':11300', 'without a host'],
            'unclosed bracket' => ['[::1', 'bad IPv6 address'],
        ];
    }

    /** @dataProvider badLists */
    public function testBadListsAreValueErrors(string $list, string $problem): void
    {
        $this->expectException(ValueError::class);
        $this->expectExceptionMessage('PkLockClient::__construct(): Argument #1 ($host) ');
        $this->expectExceptionMessage($problem);
        new PkLockClient($list);
    }

    public function testPklockServersComesBeforeDefaultHost(): void
    {
        $servers = ini_get('pklock.servers');
        $host = ini_get('pklock.default_host');
        try {
            ini_set('pklock.default_host', '127.0.0.1');
            ini_set('pklock.servers', "127.0.0.1:{$this->closedPort()},{$this->live()}");
            $this->assertSame(['pong' => true], (new PkLockClient(null, null, ['connect_timeout' => 1.0]))->rpc('ping'));

            ini_set('pklock.servers', 'a,,b');
            $this->expectException(ValueError::class);
            $this->expectExceptionMessage('the pklock.servers setting must not have an empty entry');
            new PkLockClient();
        } finally {
            ini_set('pklock.servers', $servers);
            ini_set('pklock.default_host', $host);
        }
    }

    public function testAHostArgumentOverridesPklockServers(): void
    {
        $servers = ini_get('pklock.servers');
        try {
            ini_set('pklock.servers', "127.0.0.1:{$this->closedPort()}");
            $this->assertSame(['pong' => true], $this->client()->rpc('ping'));
        } finally {
            ini_set('pklock.servers', $servers);
        }
    }

    public function testEveryProcessOfAHostTakesTheSameNode(): void
    {
        $other = LockdServer::start();
        $children = [];
        try {
            $a = $this->live();
            $b = "{$other->host()}:{$other->port()}";
            // With random orders, 6 processes on one of 2 nodes would happen 1 time in 32.
            foreach (["$a,$b", "$b,$a", "$a,$b", "$b,$a", "$a,$b", "$b,$a"] as $i => $list) {
                $children[$i] = PhpChild::start(sprintf(
                    '$client = new PkLockClient(%s); $client->lock(%s); echo "locked\n"; sleep(600);',
                    var_export($list, true),
                    var_export($this->key("k$i"), true)
                ));
            }
            $served = [];
            foreach ($children as $i => $child) {
                $this->assertSame('locked', $child->readLine());
                $served[] = $this->portHolding($this->key("k$i"), self::$server, $other);
            }
            $this->assertCount(1, array_unique($served), 'ports serving the processes: ' . implode(', ', $served));
        } finally {
            foreach ($children as $child) {
                $child->kill();
            }
            $other->stop();
        }
    }

    public function testListOrderTakesTheFirstNodeThatAnswers(): void
    {
        $other = LockdServer::start();
        try {
            foreach ([[self::$server, $other], [$other, self::$server]] as $i => [$first, $second]) {
                $list = "127.0.0.1:{$this->closedPort()},{$first->host()}:{$first->port()},{$second->host()}:{$second->port()}";
                $client = new PkLockClient($list, null, ['node_order' => 'list', 'connect_timeout' => 1.0]);
                $this->assertTrue($client->lock($this->key("k$i")));
                $this->assertSame($first->port(), $this->portHolding($this->key("k$i"), self::$server, $other));
                $client->close();
            }
        } finally {
            $other->stop();
        }
    }

    public function testABadNodeOrderIsAValueError(): void
    {
        try {
            new PkLockClient('a,b', null, ['node_order' => 'nearest']);
            $this->fail('nearest is no node order');
        } catch (ValueError $e) {
            $this->assertStringContainsString("['node_order'] must be 'host', 'random' or 'list'", $e->getMessage());
        }
        $order = ini_get('pklock.node_order');
        $this->assertSame('host', $order, 'the default');
        try {
            ini_set('pklock.node_order', 'nearest');
            $this->assertSame(['pong' => true], $this->client()->rpc('ping'), 'a single lockd has no order to read');
            $this->expectException(ValueError::class);
            $this->expectExceptionMessage("the pklock.node_order setting must be 'host', 'random' or 'list'");
            new PkLockClient('a,b');
        } finally {
            ini_set('pklock.node_order', $order);
        }
    }

    /** The port of whichever of `$servers` has a holder of `$key`, or null. */
    private function portHolding(string $key, LockdServer ...$servers): ?int
    {
        foreach ($servers as $server) {
            $keys = (new PkLockClient($server->host(), $server->port()))->rpc('locks', ['prefix' => $key])['keys'];
            foreach ($keys as $info) {
                if ($info['key'] === $key && $info['holders'] !== []) {
                    return $server->port();
                }
            }
        }
        return null;
    }
}
