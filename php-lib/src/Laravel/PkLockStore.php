<?php

// Laravel cache store whose locks live in lockd: `Cache::store('pklock')->lock($name)` gives a
// PkLockLock (get(), block() waiting on the server, release()). Cached values, which lockd
// does not keep, go to another Laravel store given to it (none by default). Registered as the
// `pklock` cache driver by PkLockServiceProvider; docs/laravel.md.

declare(strict_types=1);

namespace PkLock\Laravel;

use Illuminate\Cache\NullStore;
use Illuminate\Contracts\Cache\LockProvider;
use Illuminate\Contracts\Cache\Store;
use PkLockClient;
use PkLockLostException;

/**
 * Each Laravel lock owner (the `$owner` string of `lock()`, random by default) is its own
 * lockd lock owner, a `PkLockClient` of its own, while it holds locks through this store:
 * two owners conflict exactly as two processes do, and one owner's locks are released by
 * lockd when this process dies. A lock never expires while its holder lives: `$seconds` is
 * accepted and ignored.
 *
 * The lock table of this process (who holds what through this store) is the one door
 * PkLockLock goes through: acquireFor(), releaseFor(), forceRelease(), ownerOf().
 */
final class PkLockStore implements Store, LockProvider
{
    private Store $values;
    /** @var array<string, PkLockClient> the lockd client of each owner that holds locks here */
    private array $clients = [];
    /** @var array<string, array<string, true>> the lock names each owner holds here */
    private array $held = [];

    /**
     * @param string|null          $host    a lockd host, or a cluster's nodes 'h1:p1,h2:p2'; null: the pklock.* INI settings
     * @param int|null             $port    null: pklock.default_port
     * @param array<string, mixed> $options PkLockClient options (connect_timeout, io_timeout, auth_key, tls, ...)
     * @param Store|null           $values  where cached values go (get/put/...); default: nowhere (NullStore)
     */
    public function __construct(
        private ?string $host = null,
        private ?int $port = null,
        private array $options = [],
        ?Store $values = null,
    ) {
        $this->values = $values ?? new NullStore();
    }

    /**
     * A lock on `$name` for `$owner` (random when null). `$seconds` is ignored: the lock lasts
     * until released or until this process (its connection to lockd) dies.
     */
    public function lock($name, $seconds = 0, $owner = null): PkLockLock
    {
        return new PkLockLock($this, (string) $name, (int) $seconds, $owner === null ? null : (string) $owner);
    }

    /**
     * The lock `$owner` holds on `$name`, to release it later in this process. In another
     * process it can release nothing (lockd ties a lock to the connection that took it):
     * its release() returns false.
     */
    public function restoreLock($name, $owner): PkLockLock
    {
        return $this->lock($name, 0, $owner);
    }

    /**
     * Takes `$name` for `$owner`, waiting on the server up to `$waitSeconds` (0: try once).
     * False when another owner holds it after the wait, or when `$owner` already holds it
     * (as Laravel's own drivers answer: a held lock is not acquired twice).
     *
     * @throws \PkLockException when lockd cannot be reached, refuses (e.g. deadlock), or `$owner`'s locks were lost
     */
    public function acquireFor(string $name, string $owner, float $waitSeconds): bool
    {
        if (isset($this->held[$owner][$name])) {
            return false;
        }
        $client = $this->clients[$owner] ??= new PkLockClient($this->host, $this->port, $this->options);
        $granted = false;
        try {
            $granted = $client->lock($name, $waitSeconds);
        } catch (PkLockLostException $e) {
            // lockd released all of this owner's locks with the connection: forget them.
            unset($this->held[$owner]);
            throw $e;
        } finally {
            if ($granted) {
                $this->held[$owner][$name] = true;
            } elseif (!isset($this->held[$owner])) {
                // An owner that holds nothing needs no client (and a timed-out or refused
                // request must not leave one behind per random owner).
                unset($this->clients[$owner]);
            }
        }

        return $granted;
    }

    /** Releases `$owner`'s lock on `$name`; false when `$owner` holds none here. */
    public function releaseFor(string $name, string $owner): bool
    {
        if (!isset($this->held[$owner][$name])) {
            return false;
        }
        $client = $this->clients[$owner];
        unset($this->held[$owner][$name]);
        if ($this->held[$owner] === []) {
            unset($this->held[$owner], $this->clients[$owner]);
        }

        return $client->unlock($name);
    }

    /**
     * Releases `$name` whichever owner holds it in this process. A lock another process holds
     * cannot be taken from it (lockd releases it when that process releases it or dies).
     *
     * @throws LockHeldElsewhereException when another process holds `$name`
     */
    public function forceRelease(string $name): void
    {
        $owner = $this->ownerOf($name);
        if ($owner !== null) {
            $this->releaseFor($name, $owner);

            return;
        }
        $probe = new PkLockClient($this->host, $this->port, $this->options);
        if (!$probe->lock($name, 0.0)) {
            throw new LockHeldElsewhereException($name);
        }
        $probe->unlock($name);
    }

    /** The owner holding `$name` through this store in this process, or null. */
    public function ownerOf(string $name): ?string
    {
        foreach ($this->held as $owner => $names) {
            if (isset($names[$name])) {
                return (string) $owner;
            }
        }

        return null;
    }

    // Cached values: the values store's business.

    public function get($key)
    {
        return $this->values->get($key);
    }

    public function many(array $keys)
    {
        return $this->values->many($keys);
    }

    public function put($key, $value, $seconds)
    {
        return $this->values->put($key, $value, $seconds);
    }

    public function putMany(array $values, $seconds)
    {
        return $this->values->putMany($values, $seconds);
    }

    public function increment($key, $value = 1)
    {
        return $this->values->increment($key, $value);
    }

    public function decrement($key, $value = 1)
    {
        return $this->values->decrement($key, $value);
    }

    public function forever($key, $value)
    {
        return $this->values->forever($key, $value);
    }

    public function forget($key)
    {
        return $this->values->forget($key);
    }

    /** Flushes the values store; locks are not cache entries and stay held. */
    public function flush()
    {
        return $this->values->flush();
    }

    public function getPrefix()
    {
        return $this->values->getPrefix();
    }
}
