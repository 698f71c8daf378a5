<?php

// pklock.so under real php-fpm (docs/php-fpm.md): configured as that page says (extension in
// php.ini, pklock.* from the pool's php_admin_value), each worker keeps one connection across
// requests, and a request's locks go at its end, also after a fatal error or
// fastcgi_finish_request(), and with a SIGKILLed worker.

declare(strict_types=1);

namespace PkLock\Tests;

final class FpmTest extends PkLockTestCase
{
    private const SCRIPT = __DIR__ . '/fixtures/web.php';
    private const WORKERS = 2;
    private const REUSE_REQUESTS = 8;

    private static ?PhpFpm $fpm = null;

    public static function setUpBeforeClass(): void
    {
        $reason = PhpFpm::unavailableReason();
        if ($reason !== null) {
            fwrite(STDERR, "FpmTest skipped: {$reason}\n");
            return;
        }
        parent::setUpBeforeClass();
        self::$fpm = PhpFpm::start(
            'extension=' . PhpChild::extensionPath() . "\n",
            // The client in web.php is `new PkLockClient()`: it reaches this test's lockd only
            // if the pool's settings took effect.
            ['php_admin_value[pklock.default_host] = 127.0.0.1', 'php_admin_value[pklock.default_port] = ' . self::$server->port()],
            self::WORKERS
        );
    }

    public static function tearDownAfterClass(): void
    {
        self::$fpm?->stop();
        self::$fpm = null;
        parent::tearDownAfterClass();
    }

    protected function setUp(): void
    {
        $reason = PhpFpm::unavailableReason();
        if ($reason !== null) {
            $this->markTestSkipped($reason);
        }
    }

    public function testEachWorkerKeepsOneConnectionAcrossRequests(): void
    {
        $connectionsByWorker = [];
        $requestsByWorker = [];
        for ($i = 0; $i < self::REUSE_REQUESTS; $i++) {
            $status = $this->request('status', $this->key());
            $connectionsByWorker[$status['pid']][$status['connection']] = true;
            $requestsByWorker[$status['pid']] = ($requestsByWorker[$status['pid']] ?? 0) + 1;
        }

        $this->assertGreaterThan(1, max($requestsByWorker), 'some worker served several requests');
        foreach ($connectionsByWorker as $pid => $connections) {
            $this->assertCount(1, $connections, "worker {$pid} used one connection for all its requests");
        }
        $all = array_merge(...array_map('array_keys', array_values($connectionsByWorker)));
        $this->assertSame(count($all), count(array_unique($all)), 'no two workers share a connection');
    }

    public function testLocksLeftAtRequestEndAreReleased(): void
    {
        $key = $this->key();
        $this->assertIsInt($this->request('lock-and-leave', $key)['connection']);
        $this->waitUntil(fn () => $this->holdersOf($key) === 0, 'the lock left at request end is released');

        $this->assertIsInt($this->request('rpc-lock-and-leave', $key)['connection']);
        $this->waitUntil(fn () => $this->holdersOf($key) === 0, 'the rpc() lock left at request end is released');
    }

    public function testLocksAreReleasedAfterAFatalError(): void
    {
        $key = $this->key();
        $this->assertStringContainsString('Call to undefined function', $this->body('lock-then-fatal', $key));
        $this->waitUntil(fn () => $this->holdersOf($key) === 0, 'the lock is released after the fatal error');

        $this->assertStringContainsString('Call to undefined function', $this->body('fatal-inside-synchronized', $key));
        $this->waitUntil(fn () => $this->holdersOf($key) === 0, 'the synchronized() lock is released after the fatal error');
    }

    public function testLocksAreReleasedAtTheEndOfARequestThatFinishedItsResponseEarly(): void
    {
        $key = $this->key();
        $this->assertSame(['locked' => true], $this->request('lock-around-finish-request', $key));
        $this->waitUntil(
            fn () => $this->holdersOf($key) === 0 && $this->holdersOf("{$key}-after") === 0,
            'the locks taken before and after fastcgi_finish_request() are released'
        );
    }

    public function testAKilledWorkersLocksAreReleased(): void
    {
        $key = $this->key();
        $pid = $this->request('lock-and-hang', $key)['pid'];
        $this->assertSame(1, $this->holdersOf($key), 'the hanging worker holds the lock');

        posix_kill($pid, SIGKILL);

        $this->waitUntil(fn () => $this->holdersOf($key) === 0, 'lockd releases the killed worker\'s lock');
        $this->assertTrue($this->client()->lock($key, 0));
        $this->request('status', $this->key('after-kill'));
    }

    public function testAPoolThatLoadsTheExtensionItselfTakesOnlyTheSettingsListedAboveIt(): void
    {
        // php-fpm applies a pool's php_admin_value lines last to first, and a pklock.* line
        // is refused until the extension line has registered the setting.
        $port = 'php_admin_value[pklock.default_port] = ' . self::$server->port();
        $extension = 'php_admin_value[extension] = ' . PhpChild::extensionPath();
        foreach ([[[$port, $extension], (string) self::$server->port()], [[$extension, $port], '11300']] as [$lines, $expected]) {
            $pool = PhpFpm::start('', $lines, 1);
            try {
                $settings = json_decode($pool->request(self::SCRIPT, ['action' => 'settings', 'key' => '']), true);
                $this->assertSame($expected, $settings['pklock.default_port'] ?? null, implode("\n", $lines) . "\n" . $pool->log());
            } finally {
                $pool->stop();
            }
        }
    }

    /** @return array<string, mixed> the JSON the request printed */
    private function request(string $action, string $key): array
    {
        $body = $this->body($action, $key);
        $decoded = json_decode($body, true);
        $this->assertIsArray($decoded, "{$action}: {$body}");
        return $decoded;
    }

    private function body(string $action, string $key): string
    {
        return self::$fpm->request(self::SCRIPT, ['action' => $action, 'key' => $key]);
    }
}
