<?php

// Thrown by forceRelease() of a Laravel pklock lock that another process holds: lockd ties a
// lock to its holder's connection, so only that process (or its death) can release it.

declare(strict_types=1);

namespace PkLock\Laravel;

use RuntimeException;

final class LockHeldElsewhereException extends RuntimeException
{
    public function __construct(public readonly string $lockName, int $code = 0, ?\Throwable $previous = null)
    {
        parent::__construct(sprintf(
            'The lock "%s" is held by another process; lockd releases it only when that process releases it or dies.',
            $lockName
        ), $code, $previous);
    }
}
