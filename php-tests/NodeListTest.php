<?php

// Node lists: `new PkLockClient('h1:p1,h2:p2')` and the pklock.servers INI setting. Against a
// single lockd a list behaves as that lockd (a dead entry is skipped, a list with no live
// node names every node), bad lists are ValueErrors, and one list shares one connection.
// Resuming a cluster session is unit-tested against scripted nodes in
// php-ext/src/session.rs (no real cluster here).

declare(strict_types=1);

namespace PkLock\Tests;

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
}
