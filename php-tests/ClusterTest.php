<?php

// pklock.so against a real three-node cluster (one etcd member, three lockd nodes): a
// PkLockClient given the node list keeps its lock, with the same token, through the SIGKILL
// of the node it was connected to, while another client is refused the key; a release is
// seen at once through another node; the Symfony store takes the same list as a DSN. Skipped, saying why, where etcd is not installed.

declare(strict_types=1);

namespace PkLock\Tests;

use PHPUnit\Framework\TestCase;
use PkLock\Symfony\PkLockStore;
use PkLock\Testing\EtcdServer;
use PkLock\Testing\LockdServer;
use PkLockClient;
use Symfony\Component\Lock\LockFactory;

final class ClusterTest extends TestCase
{
    private const NODES = 3;

    private static ?EtcdServer $etcd = null;
    /** @var array<string, LockdServer> by node name */
    private static array $nodes = [];

    public static function setUpBeforeClass(): void
    {
        if (!EtcdServer::isInstalled()) {
            return;
        }
        self::$etcd = EtcdServer::start();
        $prefix = '/pklock-phpunit/' . getmypid();
        for ($i = 0; $i < self::NODES; $i++) {
            self::$nodes["n{$i}"] = LockdServer::start(
                ['--cluster', self::$etcd->url(), '--cluster-prefix', $prefix, '--node-id', "n{$i}", '--session-ttl', '10']
            );
        }
    }

    public static function tearDownAfterClass(): void
    {
        foreach (self::$nodes as $node) {
            $node->stop();
        }
        self::$nodes = [];
        self::$etcd?->stop();
        self::$etcd = null;
    }

    protected function setUp(): void
    {
        if (self::$etcd === null) {
            $this->markTestSkipped('etcd is not installed (apt-get install etcd-server)');
        }
    }

    /** @param list<string> $names */
    private static function list(array $names): string
    {
        return implode(',', array_map(fn (string $n): string => '127.0.0.1:' . self::$nodes[$n]->port(), $names));
    }

    private function key(): string
    {
        return self::class . '::' . $this->getName(false);
    }

    public function testALockSurvivesTheKillOfItsNode(): void
    {
        $key = $this->key();
        $holder = new PkLockClient(self::list(array_keys(self::$nodes)));
        $this->assertTrue($holder->lock($key));
        $token = $holder->token($key);
        $served = $holder->rpc('stat', [])['cluster']['name'];

        // Another process's view, through the other nodes (a list of its own is a connection of its own).
        $others = array_values(array_diff(array_keys(self::$nodes), [$served]));
        $rival = new PkLockClient(self::list($others));
        $this->assertFalse($rival->lock($key, 0));

        self::$nodes[$served]->kill();
        $this->assertFalse($rival->lock($key, 0), 'the dead node\'s session still holds the lock');
        $this->assertTrue($holder->isHeld($key), 'the holder resumed its session on another node');
        $this->assertSame($token, $holder->token($key));
        $this->assertNotSame($served, $holder->rpc('stat', [])['cluster']['name']);
        $this->assertTrue($holder->rpc('check', ['key' => $key, 'token' => $token])['valid']);
        $this->assertTrue($holder->unlock($key));
        $this->assertTrue($rival->lock($key, 5));
        $this->assertTrue($rival->unlock($key));
    }

    public function testWhatThisProcessReleasedThroughOneNodeIsFreeThroughAnother(): void
    {
        // unlock() does not wait for its reply; the next call, on any connection of the
        // process, must still find the release applied (it waits for it when it goes to
        // another node).
        $alive = array_keys(array_filter(self::$nodes, fn (LockdServer $n): bool => $n->isRunning()));
        $this->assertGreaterThanOrEqual(2, count($alive));
        $key = $this->key();
        $first = new PkLockClient(self::list([$alive[0]]));
        $second = new PkLockClient(self::list([$alive[1]]));
        for ($round = 0; $round < 20; $round++) {
            $this->assertTrue($first->lock($key, 0), "round {$round}");
            $this->assertTrue($first->unlock($key));
            $this->assertTrue($second->lock($key, 0), "round {$round}: the key released through {$alive[0]} is still held through {$alive[1]}");
            $this->assertTrue($second->unlock($key));
        }
    }

    public function testTheSymfonyStoreTakesTheNodeListAsADsn(): void
    {
        $alive = array_keys(array_filter(self::$nodes, fn (LockdServer $n): bool => $n->isRunning()));
        $dsn = 'pklock://' . self::list($alive);
        $factory = new LockFactory(PkLockStore::fromDsn($dsn));
        $lock = $factory->createLock($this->key());
        $this->assertTrue($lock->acquire());
        $other = (new LockFactory(PkLockStore::fromDsn('pklock://' . self::list(array_reverse($alive)))))->createLock($this->key());
        $this->assertFalse($other->acquire());
        $lock->release();
        $this->assertTrue($other->acquire());
        $other->release();
    }
}
