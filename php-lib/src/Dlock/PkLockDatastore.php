<?php

// Dlock (warmans/dlock) datastore on lockd: `new \Dlock\Lock(new PkLockDatastore(...), 'import')`
// instead of Dlock's Redis or Memcache datastore. The lock is held until released or until
// this process (its connection to lockd) dies; it has no TTL. docs/php-library.md.

declare(strict_types=1);

namespace PkLock\Dlock;

use Dlock\Datastore\DatastoreInterface;
use PkLockClient;

/**
 * One datastore is one lockd lock owner (its own PkLockClient): two datastores conflict
 * exactly as two processes do, and releaseLock() releases only what this datastore holds.
 * Both spellings of Dlock's interface are implemented: acquireLock() (Dlock 0.0.3 and later)
 * and aquireLock() (0.0.1, 0.0.2).
 */
final class PkLockDatastore implements DatastoreInterface
{
    private PkLockClient $client;

    /**
     * @param PkLockClient|string|null $client the lockd client (server and options), or the server as
     *                                         `new PkLockClient()` takes it: a host or a cluster's nodes
     *                                         'h1:p1,h2:p2'; default: the pklock.* INI settings
     */
    public function __construct(PkLockClient|string|null $client = null)
    {
        $this->client = $client instanceof PkLockClient ? $client : new PkLockClient($client);
    }

    /**
     * Tries once to take `$lockId`. False when another owner holds it, or when this datastore
     * already does (as Dlock's own datastores answer).
     *
     * @throws \PkLockException when lockd cannot be reached or refuses, or this datastore's locks were lost
     */
    public function acquireLock($lockId): bool
    {
        $lockId = (string) $lockId;
        if ($this->client->token($lockId) !== null) {
            return false;
        }

        return $this->client->lock($lockId, 0.0);
    }

    /** Dlock 0.0.1 and 0.0.2's spelling of acquireLock(). */
    public function aquireLock($lockId): bool
    {
        return $this->acquireLock($lockId);
    }

    /** Releases `$lockId`; false when this datastore did not hold it. */
    public function releaseLock($lockId): bool
    {
        return $this->client->unlock((string) $lockId);
    }

    /** The client this datastore locks through (e.g. for `token()`, the fencing token). */
    public function getClient(): PkLockClient
    {
        return $this->client;
    }
}
