<?php

// Base class of the pklock.so suites: one lockd per test class, clients for it, child PHP
// processes that talk to it, and bounded polling of the server's view (`locks`), so that
// tests observe states instead of timing anything.

declare(strict_types=1);

namespace PkLock\Tests;

use PHPUnit\Framework\TestCase;
use PkLock\Testing\LockdServer;
use PkLockClient;

abstract class PkLockTestCase extends TestCase
{
    private const POLL_TIMEOUT_SECONDS = 20.0;

    protected static ?LockdServer $server = null;

    /** @return list<string> extra lockd options for this test class */
    protected static function lockdArguments(): array
    {
        return [];
    }

    public static function setUpBeforeClass(): void
    {
        self::$server = LockdServer::start(static::lockdArguments());
    }

    public static function tearDownAfterClass(): void
    {
        self::$server?->stop();
        self::$server = null;
    }

    /** @param array<string, mixed> $options */
    protected function client(array $options = []): PkLockClient
    {
        return new PkLockClient(self::$server->host(), self::$server->port(), $options);
    }

    /** A loopback port nothing listens on (now). */
    protected function closedPort(): int
    {
        $probe = stream_socket_server('tcp://127.0.0.1:0');
        $name = stream_socket_get_name($probe, false);
        fclose($probe);
        return (int) substr($name, strrpos($name, ':') + 1);
    }

    /** A key no other test uses. */
    protected function key(string $name = 'k'): string
    {
        return static::class . '::' . $this->getName(false) . ':' . $name;
    }

    /** Runs `$code` in a child PHP with `$client` already connected-to-be to this lockd. */
    protected function child(string $code): PhpChild
    {
        $prelude = sprintf(
            '$client = new PkLockClient(%s, %d);',
            var_export(self::$server->host(), true),
            self::$server->port()
        );
        return PhpChild::start($prelude . "\n" . $code);
    }

    /** The server's entry for `$key` (holders and waiters), or null when nobody has it. */
    protected function lockInfo(string $key): ?array
    {
        $observer = $this->client();
        foreach ($observer->rpc('locks', ['prefix' => $key])['keys'] as $info) {
            if ($info['key'] === $key) {
                return $info;
            }
        }
        return null;
    }

    protected function waitersOn(string $key): int
    {
        return count($this->lockInfo($key)['waiters'] ?? []);
    }

    protected function holdersOf(string $key): int
    {
        return count($this->lockInfo($key)['holders'] ?? []);
    }

    /** Polls until `$condition()` is true; fails the test after a bounded wait. */
    protected function waitUntil(callable $condition, string $what): void
    {
        $deadline = microtime(true) + self::POLL_TIMEOUT_SECONDS;
        while (!$condition()) {
            if (microtime(true) > $deadline) {
                $this->fail("gave up waiting until {$what}");
            }
            usleep(10_000);
        }
    }
}
