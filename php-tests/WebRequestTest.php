<?php

// Request end under a long-lived SAPI process (php -S standing in for PHP-FPM): the socket is
// kept across requests, and whatever a request still holds at its end is released, also when
// no destructor ran and after a fatal error.

declare(strict_types=1);

namespace PkLock\Tests;

final class WebRequestTest extends PkLockTestCase
{
    private const READY_TIMEOUT_SECONDS = 15.0;

    /** @var resource|null */
    private static $webServer = null;
    private static int $webPort = 0;

    public static function setUpBeforeClass(): void
    {
        parent::setUpBeforeClass();
        $probe = stream_socket_server('tcp://127.0.0.1:0');
        $name = stream_socket_get_name($probe, false);
        fclose($probe);
        self::$webPort = (int) substr($name, strrpos($name, ':') + 1);
        $command = [
            PHP_BINARY, '-d', 'extension=' . PhpChild::extensionPath(), '-d', 'display_errors=1',
            '-d', 'pklock.default_port=' . self::$server->port(),
            '-S', '127.0.0.1:' . self::$webPort, __DIR__ . '/fixtures/web.php',
        ];
        $descriptors = [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => ['file', '/dev/null', 'w']];
        self::$webServer = proc_open($command, $descriptors, $pipes);
        $deadline = microtime(true) + self::READY_TIMEOUT_SECONDS;
        while (@stream_socket_client('tcp://127.0.0.1:' . self::$webPort, $errno, $error, 0.2) === false) {
            if (microtime(true) > $deadline) {
                throw new \RuntimeException('php -S did not start');
            }
            usleep(20_000);
        }
    }

    public static function tearDownAfterClass(): void
    {
        if (self::$webServer !== null) {
            proc_terminate(self::$webServer, 9);
            proc_close(self::$webServer);
            self::$webServer = null;
        }
        parent::tearDownAfterClass();
    }

    public function testLocksLeftAtRequestEndAreReleasedAndTheSocketIsKept(): void
    {
        $key = $this->key();

        $first = $this->request('lock-and-leave', $key);
        $after = $this->request('status', $key);

        $this->assertSame(0, $after['holders'], 'RSHUTDOWN released the lock');
        $this->assertSame($first['connection'], $after['connection'], 'the next request used the same connection');
    }

    public function testRequestEndReleasesLocksNoObjectTracks(): void
    {
        $key = $this->key();

        $this->request('rpc-lock-and-leave', $key);
        $after = $this->request('status', $key);

        $this->assertSame(0, $after['holders'], 'only the request-end hook (RSHUTDOWN) can release this one');
    }

    public function testLocksAreReleasedAfterAFatalError(): void
    {
        $key = $this->key();

        $this->request('lock-then-fatal', $key);
        $this->assertSame(0, $this->request('status', $key)['holders']);

        $this->request('fatal-inside-synchronized', $key);
        $this->assertSame(0, $this->request('status', $key)['holders']);
        $this->assertSame(0, $this->request('status', $key)['holders'], 'the process still works');
    }

    private function request(string $action, string $key): ?array
    {
        $url = sprintf('http://127.0.0.1:%d/?action=%s&key=%s', self::$webPort, $action, rawurlencode($key));
        $context = stream_context_create(['http' => ['timeout' => 20, 'ignore_errors' => true]]);
        $body = file_get_contents($url, false, $context);
        $this->assertIsString($body, "request {$action} failed");
        return json_decode($body, true);
    }
}
