<?php

// pklock.so's exception classes behave as PHP's own: constructible from PHP (for mocks),
// thrown with the file, line and trace of the failing call, and with the getCode() values
// docs/php-exceptions.md lists.

declare(strict_types=1);

namespace PkLock\Tests;

use PkLockClient;
use PkLockException;
use ReflectionClass;
use RuntimeException;

final class ExceptionTest extends PkLockTestCase
{
    private const DOC = __DIR__ . '/../docs/php-exceptions.md';

    /** @return array<string, array{class-string<PkLockException>}> */
    public static function exceptionClasses(): array
    {
        $classes = array_filter(
            (new \ReflectionExtension('pklock'))->getClassNames(),
            fn (string $class): bool => is_a($class, PkLockException::class, true)
        );
        return array_combine($classes, array_map(fn (string $class): array => [$class], $classes));
    }

    /** @dataProvider exceptionClasses */
    public function testEveryClassIsConstructedLikeAnyException(string $class): void
    {
        $previous = new RuntimeException('cause');

        $line = __LINE__ + 1;
        $exception = new $class('made in a test', 5, $previous);

        $this->assertInstanceOf(RuntimeException::class, $exception);
        $this->assertSame('made in a test', $exception->getMessage());
        $this->assertSame(5, $exception->getCode());
        $this->assertSame($previous, $exception->getPrevious());
        $this->assertSame(__FILE__, $exception->getFile());
        $this->assertSame($line, $exception->getLine());
        $this->assertSame('', (new $class())->getMessage(), 'every argument is optional, as for Exception');
    }

    public function testAThrownExceptionHasTheFileLineAndTraceOfTheCall(): void
    {
        $client = new PkLockClient('127.0.0.1', $this->closedPort());

        try {
            $line = __LINE__ + 1;
            $this->lockIn($client);
            $this->fail('nothing listens on the port');
        } catch (\PkLockConnectionException $e) {
            $this->assertSame(__FILE__, $e->getFile());
            $this->assertSame(self::LOCK_LINE, $e->getLine(), 'the line of the lock() call');
            $trace = $e->getTrace();
            $this->assertSame(['PkLockClient', 'lock'], [$trace[0]['class'], $trace[0]['function']]);
            $this->assertSame([self::class, 'lockIn'], [$trace[1]['class'], $trace[1]['function']]);
            $this->assertSame($line, $trace[1]['line']);
            $this->assertStringContainsString('ExceptionTest.php(' . self::LOCK_LINE . '): PkLockClient->lock(', $e->getTraceAsString());
        }
    }

    private const LOCK_LINE = __LINE__ + 4;

    private function lockIn(PkLockClient $client): void
    {
        $client->lock($this->key(), 0);
    }

    public function testTheDocumentedCodesAreTheClassConstants(): void
    {
        preg_match_all('/^\| `([A-Z_]+)` \| (\d+) \| `(\w+)` \|/m', file_get_contents(self::DOC), $rows, PREG_SET_ORDER);
        $documented = [];
        foreach ($rows as [, $name, $code, $class]) {
            $documented[$name] = (int) $code;
            $this->assertTrue(is_a($class, PkLockException::class, true), "{$name}: {$class} is a pklock exception");
        }

        $this->assertSame($documented, (new ReflectionClass(PkLockException::class))->getConstants());
        $this->assertSame(count($documented), count(array_unique($documented)), 'no code is used twice');
    }

    public function testCodesOfRealFailures(): void
    {
        $this->assertThrowsCode(
            \PkLockConnectionException::class,
            PkLockException::CONNECT_FAILED,
            fn () => (new PkLockClient('127.0.0.1', $this->closedPort()))->lock($this->key(), 0)
        );

        // A listener that never accepts: the kernel completes the TCP handshake, nobody answers.
        $silent = stream_socket_server('tcp://127.0.0.1:0');
        $silentPort = (int) substr(strrchr(stream_socket_get_name($silent, false), ':'), 1);
        $this->assertThrowsCode(
            \PkLockConnectionException::class,
            PkLockException::REPLY_TIMEOUT,
            fn () => (new PkLockClient('127.0.0.1', $silentPort, ['io_timeout' => 0.2]))->lock($this->key(), 0)
        );
        fclose($silent);

        $this->assertThrowsCode(
            \PkLockUnknownCommandException::class,
            PkLockException::UNKNOWN_COMMAND,
            fn () => $this->client()->rpc('no_such_command')
        );

        $this->assertThrowsCode(
            \PkLockBadKeyException::class,
            PkLockException::BAD_KEY,
            fn () => $this->client()->lock(str_repeat('k', 100_000), 0)
        );

        $key = $this->key();
        $holder = $this->client();
        $this->assertTrue($holder->lock($key, 0));
        $this->assertThrowsCode(
            \PkLockTimeoutException::class,
            PkLockException::WAIT_TIMEOUT,
            fn () => $this->client()->synchronized($key, fn () => null, 0)
        );

        // Someone takes the holder's lock away behind its back; the reply to its (pipelined)
        // unlock, "not held", comes with the next reply, and the call after reports it.
        $owner = $this->lockInfo($key)['holders'][0]['owner'];
        $this->client()->rpc('unlock', ['keys' => $key, 'owner' => $owner]);
        $holder->unlock($key);
        $this->assertTrue($holder->lock($this->key('next'), 0));
        $this->assertThrowsCode(
            \PkLockLostException::class,
            PkLockException::LOCKS_LOST,
            fn () => $holder->token($this->key('next'))
        );
    }

    private function assertThrowsCode(string $class, int $code, callable $failing): void
    {
        try {
            $failing();
            $this->fail("expected {$class}");
        } catch (PkLockException $e) {
            $this->assertSame([$class, $code], [get_class($e), $e->getCode()], $e->getMessage());
        }
    }
}
