<?php

// Shared by the PHP comparison benchmarks (pairs.php, handoff.php, death.php,
// node-loss.php): where the servers are (environment variables that bench/php/run and
// bench/cluster/run set), how each peer takes and releases a lock, child PHP processes
// talking over pipes, percentiles and result lines.

declare(strict_types=1);

use Symfony\Component\Lock\LockFactory;
use Symfony\Component\Lock\LockInterface;
use Symfony\Component\Lock\Store\RedisStore;

require_once '/usr/share/php/Symfony/Component/Lock/autoload.php';

/** A way to take and release an exclusive lock on a key, from this process. */
interface Locker
{
    /** Blocks until this process holds $key. */
    public function acquire(string $key): void;

    public function release(string $key): void;
}

/**
 * pklock.so: the server queues waiters and grants in FIFO order; unlock() does not wait.
 * PKLOCK_BENCH_LOCKD is one lockd's host:port or a cluster's node list.
 */
final class PkLockLocker implements Locker
{
    public readonly PkLockClient $client;

    /** @param array<string, mixed> $options PkLockClient's */
    public function __construct(array $options = [], ?string $servers = null)
    {
        $this->client = new PkLockClient($servers ?? env('PKLOCK_BENCH_LOCKD'), null, $options);
    }

    public function acquire(string $key): void
    {
        $this->client->lock($key, null) or throw new RuntimeException("pklock: no grant for $key");
    }

    public function release(string $key): void
    {
        $this->client->unlock($key);
    }
}

/**
 * The single-instance Redlock recipe with phpredis: SET key token NX PX ttl, released by a
 * Lua compare-and-delete (EVALSHA). A waiter can only poll; a dead holder's lock lives out
 * its TTL.
 */
final class RedisLocker implements Locker
{
    private const RELEASE = 'if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end';

    private Redis $redis;
    private string $release;
    /** @var array<string, string> key => token of the locks held */
    private array $tokens = [];

    public function __construct(private int $ttlMs, private int $pollUs)
    {
        $this->redis = redisConnection();
        $this->release = $this->redis->script('load', self::RELEASE);
    }

    public function acquire(string $key): void
    {
        $token = bin2hex(random_bytes(16));
        while (!$this->redis->set($key, $token, ['nx', 'px' => $this->ttlMs])) {
            usleep($this->pollUs);
        }
        $this->tokens[$key] = $token;
    }

    public function release(string $key): void
    {
        $this->redis->evalSha($this->release, [$key, $this->tokens[$key]], 1);
        unset($this->tokens[$key]);
    }
}

/** php-memcached: add() with a TTL (whole seconds), delete() to release; waiters poll. */
final class MemcachedLocker implements Locker
{
    private Memcached $memcached;

    public function __construct(private int $ttlSeconds, private int $pollUs)
    {
        [$host, $port] = address('PKLOCK_BENCH_MEMCACHED');
        $this->memcached = new Memcached();
        $this->memcached->setOption(Memcached::OPT_TCP_NODELAY, true);
        $this->memcached->addServer($host, $port);
    }

    public function acquire(string $key): void
    {
        while (!$this->memcached->add($key, getmypid(), $this->ttlSeconds)) {
            if ($this->memcached->getResultCode() !== Memcached::RES_NOTSTORED) {
                throw new RuntimeException('memcached: ' . $this->memcached->getResultMessage());
            }
            usleep($this->pollUs);
        }
    }

    public function release(string $key): void
    {
        $this->memcached->delete($key);
    }
}

/**
 * PostgreSQL session-level advisory locks through PDO (prepared statements): the server
 * queues waiters and frees a dead session's locks when its connection closes.
 */
final class PostgresLocker implements Locker
{
    private PDOStatement $lock;
    private PDOStatement $unlock;

    public function __construct()
    {
        $pdo = new PDO(env('PKLOCK_BENCH_PG_DSN'), null, null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
        $this->lock = $pdo->prepare('SELECT pg_advisory_lock(?)');
        $this->unlock = $pdo->prepare('SELECT pg_advisory_unlock(?)');
    }

    public function acquire(string $key): void
    {
        $this->lock->execute([crc32($key)]);
    }

    public function release(string $key): void
    {
        $this->unlock->execute([crc32($key)]);
    }
}

/** flock() on a file per key, kept open: local to one machine, freed by the kernel at death. */
final class FlockLocker implements Locker
{
    /** @var array<string, resource> */
    private array $files = [];

    public function acquire(string $key): void
    {
        $this->files[$key] ??= fopen(env('PKLOCK_BENCH_FLOCK_DIR') . '/' . rawurlencode($key), 'c');
        flock($this->files[$key], LOCK_EX) or throw new RuntimeException("flock failed for $key");
    }

    public function release(string $key): void
    {
        flock($this->files[$key], LOCK_UN);
    }
}

/**
 * symfony/lock 5.4 (Debian's php-symfony-lock) on its RedisStore with phpredis. RedisStore
 * has no blocking wait, so Lock::acquire(true) retries save() with ~100 ms sleeps.
 */
final class SymfonyRedisLocker implements Locker
{
    private LockFactory $factory;
    /** @var array<string, LockInterface> */
    private array $locks = [];

    public function __construct(private float $ttlSeconds)
    {
        $this->factory = new LockFactory(new RedisStore(redisConnection()));
    }

    public function acquire(string $key): void
    {
        $this->locks[$key] = $this->factory->createLock($key, $this->ttlSeconds, false);
        $this->locks[$key]->acquire(true);
    }

    public function release(string $key): void
    {
        $this->locks[$key]->release();
        unset($this->locks[$key]);
    }
}

/**
 * etcd's own lock API (v3lock Lock/Unlock, what `etcdctl lock` uses) through etcd's JSON
 * gateway, with php-curl keeping one connection open to one member of PKLOCK_BENCH_ETCD
 * (picked at random, as pklock.so picks a node). Like a lockd session, one lease per
 * process holds its locks; its TTL outlasts any run, so it is never kept alive. The etcd
 * member queues waiters (each waits for the deletion of the key ahead of it).
 */
final class EtcdLocker implements Locker
{
    private const LEASE_TTL_SECONDS = 3600;

    private CurlHandle $curl;
    private string $url;
    private string $lease;
    /** @var array<string, string> key => base64 ownership key that Unlock takes */
    private array $owners = [];

    public function __construct()
    {
        $members = explode(',', env('PKLOCK_BENCH_ETCD'));
        $this->url = 'http://' . $members[random_int(0, count($members) - 1)];
        $this->curl = curl_init();
        curl_setopt_array($this->curl, [CURLOPT_POST => true, CURLOPT_RETURNTRANSFER => true, CURLOPT_TCP_NODELAY => true]);
        $this->lease = $this->call('/v3/lease/grant', ['TTL' => self::LEASE_TTL_SECONDS])['ID'];
    }

    public function acquire(string $key): void
    {
        $this->owners[$key] = $this->call('/v3/lock/lock', ['name' => base64_encode($key), 'lease' => $this->lease])['key'];
    }

    public function release(string $key): void
    {
        $this->call('/v3/lock/unlock', ['key' => $this->owners[$key]]);
        unset($this->owners[$key]);
    }

    private function call(string $path, array $body): array
    {
        curl_setopt_array($this->curl, [CURLOPT_URL => $this->url . $path, CURLOPT_POSTFIELDS => json_encode($body)]);
        $reply = curl_exec($this->curl);
        if ($reply === false || curl_getinfo($this->curl, CURLINFO_RESPONSE_CODE) !== 200) {
            throw new RuntimeException("etcd $path: " . ($reply === false ? curl_error($this->curl) : $reply));
        }
        return json_decode($reply, true, flags: JSON_THROW_ON_ERROR);
    }
}

/**
 * The locker called $peer. $ttlMs is the TTL the TTL-bound peers give a lock (memcached
 * rounds it up to whole seconds); their waiters poll every millisecond. $worker numbers
 * the processes of a run (pklock-hosts places them by it).
 */
function locker(string $peer, int $ttlMs = 30000, int $worker = 0): Locker
{
    return match ($peer) {
        'pklock' => new PkLockLocker(),
        // A cluster's node list tried in random order by each process, instead of the
        // default one order per host (pklock.node_order).
        'pklock-random' => new PkLockLocker(['node_order' => 'random']),
        // As many hosts as nodes, each on a node of its own, as the host order at best
        // spreads hosts: process $worker starts on node $worker modulo their count (list
        // order, the list rotated).
        'pklock-hosts' => new PkLockLocker(['node_order' => 'list'], rotateList(env('PKLOCK_BENCH_LOCKD'), $worker)),
        'redis' => new RedisLocker($ttlMs, 1000),
        'memcached' => new MemcachedLocker(intdiv($ttlMs + 999, 1000), 1000),
        'postgres' => new PostgresLocker(),
        'flock' => new FlockLocker(),
        'symfony-redis' => new SymfonyRedisLocker($ttlMs / 1000),
        'etcd' => new EtcdLocker(),
        default => throw new InvalidArgumentException("unknown peer $peer"),
    };
}

/** The node list $list begun at its entry $by (modulo its length), the rest in turn. */
function rotateList(string $list, int $by): string
{
    $nodes = explode(',', $list);
    $by %= count($nodes);
    return implode(',', [...array_slice($nodes, $by), ...array_slice($nodes, 0, $by)]);
}

function redisConnection(): Redis
{
    [$host, $port] = address('PKLOCK_BENCH_REDIS');
    $redis = new Redis();
    $redis->connect($host, $port);
    return $redis;
}

function env(string $name): string
{
    $value = getenv($name);
    if ($value === false || $value === '') {
        throw new RuntimeException("$name is not set: run the benchmarks through bench/php/run");
    }
    return $value;
}

/** @return array{string, int} host and port from an environment variable holding host:port */
function address(string $name): array
{
    [$host, $port] = explode(':', env($name), 2);
    return [$host, (int) $port];
}

/** A PHP child running bench/php/$script with pklock.so loaded, talking over stdin/stdout. */
final class Child
{
    /** @var resource */
    private $process;
    /** @var resource */
    private $in;
    /** @var resource */
    private $out;

    /** @param list<string> $args */
    public function __construct(string $script, array $args)
    {
        $command = [PHP_BINARY, '-d', 'extension=' . env('PKLOCK_BENCH_EXT'), __DIR__ . "/$script", ...$args];
        $this->process = proc_open($command, [['pipe', 'r'], ['pipe', 'w'], STDERR], $pipes);
        [$this->in, $this->out] = $pipes;
    }

    public function send(string $line): void
    {
        fwrite($this->in, "$line\n");
    }

    /** The child's next line; throws if it exited instead. */
    public function receive(): string
    {
        $line = fgets($this->out);
        if ($line === false) {
            throw new RuntimeException('a benchmark child process exited early (see its error above)');
        }
        return rtrim($line, "\n");
    }

    public function kill(): void
    {
        posix_kill(proc_get_status($this->process)['pid'], SIGKILL);
    }

    public function close(): void
    {
        fclose($this->in);
        fclose($this->out);
        proc_close($this->process);
    }
}

/** The $p-th percentile (0..100) of $values, nearest rank. */
function percentile(array $values, float $p): float
{
    sort($values);
    return $values[max(0, (int) ceil($p / 100 * count($values)) - 1)];
}

/**
 * Prints one result as a JSON line (read by report.php and plot.py). PKLOCK_BENCH_CONDITION
 * (set by bench/php/run, e.g. "one core busy") is added to the case, so runs under different
 * machine conditions sit side by side.
 */
function result(string $part, string $peer, string $case, string $metric, float $value, string $unit, array $extra = []): void
{
    $condition = getenv('PKLOCK_BENCH_CONDITION');
    if ($condition !== false && $condition !== '') {
        $case .= ", $condition";
    }
    echo json_encode(['part' => $part, 'peer' => $peer, 'case' => $case, 'metric' => $metric, 'value' => $value, 'unit' => $unit] + $extra), "\n";
}

/** $argv's --name=value options, merged over $defaults (values keep the defaults' types). */
function options(array $argv, array $defaults): array
{
    foreach (array_slice($argv, 1) as $arg) {
        if (!preg_match('/^--([a-z-]+)=(.*)$/', $arg, $m) || !array_key_exists($m[1], $defaults)) {
            fwrite(STDERR, "unknown argument $arg; options: --" . implode('=, --', array_keys($defaults)) . "=\n");
            exit(2);
        }
        settype($m[2], gettype($defaults[$m[1]]));
        $defaults[$m[1]] = $m[2];
    }
    return $defaults;
}
