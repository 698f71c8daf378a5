<?php

// symfony/lock store backed by lockd through pklock.so: blocking, shared (read/write) and
// non-expiring locks that belong to one Symfony `Key` each and die with the holder's
// connection. Written against symfony/lock 5.4 (Debian's php-symfony-lock); the declared
// return types also satisfy the 6.x/7.x interfaces.

declare(strict_types=1);

namespace PkLock\Symfony;

use PkLockBadKeyException;
use PkLockClient;
use PkLockConnectionException;
use PkLockDeadlockException;
use PkLockException;
use Symfony\Component\Lock\BlockingSharedLockStoreInterface;
use Symfony\Component\Lock\BlockingStoreInterface;
use Symfony\Component\Lock\Exception\InvalidArgumentException;
use Symfony\Component\Lock\Exception\LockAcquiringException;
use Symfony\Component\Lock\Exception\LockConflictedException;
use Symfony\Component\Lock\Exception\LockReleasingException;
use Symfony\Component\Lock\Exception\LockStorageException;
use Symfony\Component\Lock\Key;

/**
 * A Symfony lock store on lockd.
 *
 * Every `Key` gets its own `PkLockClient` (created on its first save and kept in the key's
 * state), so each key is its own lock owner: two keys on one resource conflict even in one
 * process, and a key's locks go when the key (its client) is destroyed, when the request
 * ends, or when the process or its connection dies. Locks never expire while the holder
 * lives, so TTLs given to Symfony's `Lock` are ignored and `getRemainingLifetime()` is null.
 *
 * Read locks: many readers or one writer; `save()` on a key holding a read lock upgrades it
 * (immediately if it is the only reader, else it conflicts, or `waitAndSave()` waits for the
 * other readers); `saveRead()` on a key holding the write lock downgrades it at once.
 * Waiting happens on the server, in FIFO order, without polling.
 */
final class PkLockStore implements BlockingStoreInterface, BlockingSharedLockStoreInterface
{
    private const DEFAULT_PORT = 11300;
    private const DSN_SCHEME = 'pklock';
    private const FLOAT_OPTIONS = ['connect_timeout', 'io_timeout'];

    private string $host;
    private int $port;
    /** @var array<string, mixed> */
    private array $options;
    /** Name of this store's entry in a Key's state (one client per key and server). */
    private string $stateKey;

    /**
     * @param string|null          $host    lockd host, or the nodes of a lockd cluster (`h1:p1,h2:p2`);
     *                                      null: the `pklock.servers` INI setting, or when empty `pklock.default_host`
     * @param int|null             $port    lockd port (of list entries without one); null: the `pklock.default_port` INI setting
     * @param array<string, mixed> $options PkLockClient options: `connect_timeout`, `io_timeout` (seconds), `auth_key`
     */
    public function __construct(?string $host = null, ?int $port = null, array $options = [])
    {
        if (!class_exists(PkLockClient::class, false)) {
            throw new InvalidArgumentException('PkLockStore needs the pklock extension (pklock.so) to be loaded.');
        }
        $this->host = $host ?? (string) (ini_get('pklock.servers') ?: ini_get('pklock.default_host') ?: '127.0.0.1');
        $this->port = $port ?? (int) (ini_get('pklock.default_port') ?: self::DEFAULT_PORT);
        $this->options = $options;
        $this->stateKey = self::class . '@' . $this->host . ':' . $this->port;
    }

    /**
     * Builds a store from a DSN such as `pklock://127.0.0.1:11300`,
     * `pklock://lockd.internal?connect_timeout=1&io_timeout=5`, `pklock://:SECRET@lockd:11300`
     * (the password part is the `auth_key`) or, for a lockd cluster, its nodes
     * `pklock://10.0.0.1:11300,10.0.0.2:11300,[fd00::3]:11300`; handy with
     * `%env(PKLOCK_DSN)%` in services.yaml.
     */
    public static function fromDsn(string $dsn): self
    {
        // parse_url() takes no list of hosts: the parts are cut here, the hosts parsed by
        // PkLockClient (the same rules as its $host).
        $invalid = sprintf('Invalid pklock DSN "%s": expected pklock://[:auth_key@]host[:port][,host[:port]...][?options].', $dsn);
        if (!preg_match('~^([a-z]+)://(?:([^/?#]*)@)?([^@/?#]+)/?(?:\?([^#]*))?$~i', $dsn, $parts)
            || strtolower($parts[1]) !== self::DSN_SCHEME) {
            throw new InvalidArgumentException($invalid);
        }
        [, , $userInfo, $hosts] = $parts;
        $options = [];
        parse_str($parts[4] ?? '', $options);
        foreach ($options as $name => $value) {
            if (!\is_string($value)) {
                throw new InvalidArgumentException(sprintf('Invalid pklock DSN option "%s".', $name));
            }
            if (\in_array($name, self::FLOAT_OPTIONS, true)) {
                if (!is_numeric($value)) {
                    throw new InvalidArgumentException(sprintf('pklock DSN option "%s" must be a number of seconds.', $name));
                }
                $options[$name] = (float) $value;
            }
        }
        $password = explode(':', $userInfo, 2)[1] ?? '';
        if ($password !== '') {
            $options['auth_key'] = rawurldecode($password);
        }
        $port = self::DEFAULT_PORT;
        if (!str_contains($hosts, ',')) {
            // One server: named by host and port apart, as `new PkLockStore($host, $port)`
            // names it, so that both share the keys' state.
            $server = parse_url(self::DSN_SCHEME . '://' . $hosts);
            if ($server === false || !isset($server['host'])) {
                throw new InvalidArgumentException($invalid);
            }
            $hosts = trim($server['host'], '[]');
            $port = $server['port'] ?? self::DEFAULT_PORT;
        }
        try {
            // Checks the host list (and options) now rather than on the first lock.
            new PkLockClient($hosts, $port, $options);
        } catch (\ValueError|\TypeError $e) {
            throw new InvalidArgumentException($invalid . ' ' . $e->getMessage(), 0, $e);
        }

        return new self($hosts, $port, $options);
    }

    public function save(Key $key): void
    {
        $this->lock($key, 0.0, false);
    }

    public function saveRead(Key $key): void
    {
        $this->lock($key, 0.0, true);
    }

    /** Waits on the server (FIFO) as long as it takes; a deadlock is reported as a conflict. */
    public function waitAndSave(Key $key): void
    {
        $this->lock($key, null, false);
    }

    /** Waits on the server (FIFO) as long as it takes; a deadlock is reported as a conflict. */
    public function waitAndSaveRead(Key $key): void
    {
        $this->lock($key, null, true);
    }

    /** Releases the key's lock; does nothing if this key does not hold it. */
    public function delete(Key $key): void
    {
        $client = $this->existingClient($key);
        if ($client === null) {
            return;
        }
        try {
            $client->unlock((string) $key);
        } catch (PkLockConnectionException $e) {
            // The connection is gone, and with it every lock held through it: nothing is
            // left to release.
        } catch (PkLockException $e) {
            throw new LockReleasingException(sprintf('Failed to release the "%s" lock: %s', $key, $e->getMessage()), 0, $e);
        }
    }

    /**
     * Whether this key holds the lock, as lockd sees it (isHeld(): one `check` of the key's
     * fencing token). A connection that broke counts as not holding: the server has released it.
     */
    public function exists(Key $key): bool
    {
        $client = $this->existingClient($key);
        if ($client === null) {
            return false;
        }
        try {
            return $client->isHeld((string) $key);
        } catch (PkLockConnectionException $e) {
            // Also PkLockLostException: the lock went with the connection.
            return false;
        } catch (PkLockException $e) {
            throw new LockStorageException(sprintf('Failed to check the "%s" lock: %s', $key, $e->getMessage()), 0, $e);
        }
    }

    /**
     * Locks never expire, so there is nothing to extend: this only checks, without a round
     * trip, that the key still holds its lock on a live connection (Symfony calls it after
     * every acquire), and throws LockConflictedException if not.
     */
    public function putOffExpiration(Key $key, float $ttl): void
    {
        $client = $this->existingClient($key);
        try {
            // token() notices a connection the server closed without sending anything and
            // reports the loss (PkLockLostException), or knows no token. (Not isConnected():
            // against a cluster, a lock outlives its node's connection until the session is
            // resumed or its TTL runs out.)
            $held = $client !== null && $client->token((string) $key) !== null;
        } catch (PkLockConnectionException $e) {
            $held = false;
        }
        if (!$held) {
            throw new LockConflictedException(sprintf('The "%s" lock is not held (any more).', $key));
        }
    }

    private function lock(Key $key, ?float $wait, bool $shared): void
    {
        // The lock lives in this process's connection, so the key must not travel.
        $key->markUnserializable();
        $client = $this->client($key);
        try {
            $granted = $client->lock((string) $key, $wait, $shared);
        } catch (PkLockDeadlockException $e) {
            throw new LockConflictedException(sprintf('Waiting for the "%s" lock would deadlock: %s', $key, $e->getMessage()), 0, $e);
        } catch (PkLockBadKeyException|\ValueError $e) {
            // An empty or overlong resource name, refused by the client or by lockd.
            throw new InvalidArgumentException(sprintf('Cannot lock the resource "%s": %s', $key, $e->getMessage()), 0, $e);
        } catch (PkLockException $e) {
            throw new LockAcquiringException(sprintf('Failed to acquire the "%s" lock: %s', $key, $e->getMessage()), 0, $e);
        }
        if (!$granted) {
            throw new LockConflictedException(sprintf('The "%s" lock is held by someone else.', $key));
        }
    }

    /** The key's client, created on first use. */
    private function client(Key $key): PkLockClient
    {
        $client = $this->existingClient($key);
        if ($client === null) {
            $client = new PkLockClient($this->host, $this->port, $this->options);
            $key->setState($this->stateKey, $client);
        }

        return $client;
    }

    private function existingClient(Key $key): ?PkLockClient
    {
        if (!$key->hasState($this->stateKey)) {
            return null;
        }
        $client = $key->getState($this->stateKey);

        return $client instanceof PkLockClient ? $client : null;
    }
}
