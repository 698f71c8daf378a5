<?php

// php-lock (malkusch/lock 2.x, Debian's php-malkusch-lock) mutex on lockd through pklock.so:
// `$mutex->synchronized(fn () => ...)` and `$mutex->check(...)->then(...)` run the code
// while holding an exclusive lockd lock, waiting at most a given time for it.

declare(strict_types=1);

namespace PkLock\Mutex;

use InvalidArgumentException;
use malkusch\lock\exception\LockAcquireException;
use malkusch\lock\exception\LockReleaseException;
use malkusch\lock\exception\TimeoutException;
use malkusch\lock\mutex\LockMutex;
use PkLockClient;
use PkLockException;

/**
 * A malkusch/lock mutex held in lockd.
 *
 * Each mutex object is its own lock owner (it has its own `PkLockClient`), so two mutex
 * objects for one name conflict even inside one process. The lock is released when the
 * code returns or throws, when the mutex object is destroyed, at request end, or when the
 * process or its connection to lockd dies; it never times out while the holder lives.
 * Nested `synchronized()` calls on the same mutex object are re-entrant.
 *
 * If the connection to lockd broke while the code ran (so exclusion was no longer
 * guaranteed), `synchronized()` throws a LockReleaseException that carries the code's
 * result (`getCodeResult()`).
 */
class PkLockMutex extends LockMutex
{
    private PkLockClient $client;
    /** @var non-empty-string|non-empty-list<non-empty-string> */
    private string|array $keys;
    private ?float $timeout;
    private bool $shared;
    private int $depth = 0;

    /**
     * @param string|list<string> $keys    the lock name, or several names taken all together
     * @param float|null          $timeout seconds to wait for the lock before a TimeoutException; 0 tries once, null waits as long as it takes
     * @param PkLockClient|string|null $client the lockd client (its server and options); or the server as
     *                                     `new PkLockClient()` takes it: a host, or a lockd cluster's nodes
     *                                     `h1:p1,h2:p2`; default: a new one for the INI settings
     *                                     (`pklock.servers` or `pklock.default_host`, ...).
     *                                     Give each mutex its own client: a client is one lock owner.
     * @param bool                $shared  take a shared (reader) lock instead of an exclusive one
     */
    public function __construct(string|array $keys, ?float $timeout = null, PkLockClient|string|null $client = null, bool $shared = false)
    {
        if ($keys === '' || $keys === []) {
            throw new InvalidArgumentException('The lock name must not be empty.');
        }
        if ($timeout !== null && ($timeout < 0 || !is_finite($timeout))) {
            throw new InvalidArgumentException('The timeout must be a finite number of seconds >= 0, or null to wait as long as it takes.');
        }
        $this->keys = $keys;
        $this->timeout = $timeout;
        $this->client = $client instanceof PkLockClient ? $client : new PkLockClient($client);
        $this->shared = $shared;
    }

    /** The client this mutex locks through (for its `token()`, or `rpc()` introspection). */
    public function getClient(): PkLockClient
    {
        return $this->client;
    }

    /**
     * The fencing token of the current hold (of the first name), or null when not held.
     *
     * @throws \PkLockLostException when the hold was lost with the connection
     */
    public function getToken(): ?int
    {
        $first = \is_array($this->keys) ? reset($this->keys) : $this->keys;

        return $this->client->token((string) $first);
    }

    /**
     * @throws TimeoutException     the lock was not free within the timeout
     * @throws LockAcquireException lockd refused (e.g. deadlock) or could not be reached
     */
    protected function lock(): void
    {
        if ($this->depth > 0) {
            $this->depth++;

            return;
        }
        try {
            $granted = $this->client->lock($this->keys, $this->timeout, $this->shared);
        } catch (PkLockException $e) {
            throw new LockAcquireException(sprintf('Could not acquire the lock %s: %s', $this->describe(), $e->getMessage()), 0, $e);
        }
        if (!$granted) {
            throw new TimeoutException(sprintf('Timeout of %s seconds exceeded waiting for the lock %s.', $this->timeout, $this->describe()));
        }
        $this->depth = 1;
    }

    /** @throws LockReleaseException the lock was lost while held (the connection broke) */
    protected function unlock(): void
    {
        if ($this->depth > 1) {
            $this->depth--;

            return;
        }
        $this->depth = 0;
        try {
            $held = $this->client->unlock($this->keys);
        } catch (PkLockException $e) {
            throw new LockReleaseException(sprintf('The lock %s was lost while held: %s', $this->describe(), $e->getMessage()), 0, $e);
        }
        if (!$held) {
            throw new LockReleaseException(sprintf('The lock %s was not held any more when released.', $this->describe()));
        }
    }

    private function describe(): string
    {
        return \is_array($this->keys) ? '["' . implode('", "', $this->keys) . '"]' : '"' . $this->keys . '"';
    }
}
