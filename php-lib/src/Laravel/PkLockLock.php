<?php

// A Laravel lock (Cache::lock()) held in lockd: get() tries once, block($seconds) waits on the
// server (FIFO, no polling), release() frees it; lockd frees it too when the holding process
// dies. Made by PkLockStore, through which it takes and releases.

declare(strict_types=1);

namespace PkLock\Laravel;

use Illuminate\Cache\Lock;
use Illuminate\Contracts\Cache\LockTimeoutException;

final class PkLockLock extends Lock
{
    public function __construct(private PkLockStore $store, string $name, int $seconds, ?string $owner = null)
    {
        parent::__construct($name, $seconds, $owner);
    }

    /** Tries once; false when another owner holds the lock, or this owner already does. */
    public function acquire(): bool
    {
        return $this->store->acquireFor($this->name, (string) $this->owner, 0.0);
    }

    /**
     * Waits on the server up to `$seconds` for the lock (queued in FIFO order, no polling:
     * betweenBlockedAttemptsSleepFor() has no effect), then runs `$callback` and releases, or
     * returns true when there is no callback.
     *
     * @throws LockTimeoutException when the lock was not granted within `$seconds`
     */
    public function block($seconds, $callback = null)
    {
        if (!$this->store->acquireFor($this->name, (string) $this->owner, max(0.0, (float) $seconds))) {
            throw new LockTimeoutException(sprintf('The lock "%s" was not granted within %s seconds.', $this->name, $seconds));
        }
        if (is_callable($callback)) {
            try {
                return $callback();
            } finally {
                $this->release();
            }
        }

        return true;
    }

    /** False when this owner holds no such lock in this process (e.g. a lock restored in another process). */
    public function release(): bool
    {
        return $this->store->releaseFor($this->name, (string) $this->owner);
    }

    /**
     * Releases the lock whichever owner of this process holds it.
     *
     * @throws LockHeldElsewhereException when another process holds it: it cannot be taken from it
     */
    public function forceRelease(): void
    {
        $this->store->forceRelease($this->name);
    }

    /** The owner holding the lock in this process, or null (free, or held by another process). */
    protected function getCurrentOwner(): ?string
    {
        return $this->store->ownerOf($this->name);
    }
}
