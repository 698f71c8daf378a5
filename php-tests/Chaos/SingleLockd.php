<?php

// The chaos target of the original run: one throwaway lockd that is never faulted (only
// the workers are killed). See ChaosTarget.

declare(strict_types=1);

namespace PkLock\Tests\Chaos;

use PkLock\Testing\LockdServer;

final class SingleLockd implements ChaosTarget
{
    /** A dead worker's locks go with its connection: at once, so a short bound. */
    private const LEFTOVER_SECONDS = 5.0;

    private ?LockdServer $server = null;
    private int $grants = 0;

    public function start(): void
    {
        $this->server = LockdServer::start();
    }

    public function servers(): string
    {
        return $this->server->host() . ':' . $this->server->port();
    }

    public function ioTimeouts(): array
    {
        return [10.0];
    }

    public function disturb(int $until): void
    {
    }

    public function heal(): void
    {
    }

    public function disturbed(): array
    {
        return [];
    }

    public function leftovers(): array
    {
        ['problem' => $problem, 'stat' => $stat] = Leftovers::of($this->server, self::LEFTOVER_SECONDS);
        $this->grants = $stat['grants'];
        return $problem === null ? [] : [$problem];
    }

    /** lockd's own count of grants, read by leftovers(). */
    public function stats(): array
    {
        return ['server_grants' => $this->grants];
    }

    public function stop(): void
    {
        $this->server?->stop();
    }
}
