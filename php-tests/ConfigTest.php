<?php

// Configuration and introspection: INI defaults, the timeout options, server limits as their
// own exceptions, and the phpinfo() section (auth_key: AuthTest).

declare(strict_types=1);

namespace PkLock\Tests;

use PkLockClient;
use PkLockConnectionException;
use PkLockTooManyLocksException;

final class ConfigTest extends PkLockTestCase
{
    protected static function lockdArguments(): array
    {
        return ['--max-locks', '2'];
    }

    public function testIniSettingsAreTheConstructorsDefaults(): void
    {
        $host = ini_get('pklock.default_host');
        $port = ini_get('pklock.default_port');
        try {
            ini_set('pklock.default_host', self::$server->host());
            ini_set('pklock.default_port', (string) self::$server->port());
            $this->assertSame(['pong' => true], (new PkLockClient())->rpc('ping'));
        } finally {
            ini_set('pklock.default_host', $host);
            ini_set('pklock.default_port', $port);
        }
    }

    public function testServerLimitsHaveTheirOwnException(): void
    {
        $client = $this->client();
        $client->lock([$this->key('1'), $this->key('2')]);

        $this->expectException(PkLockTooManyLocksException::class);
        $client->lock($this->key('3'));
    }

    public function testAServerThatDoesNotAnswerIsAConnectionErrorAfterTheIoTimeout(): void
    {
        $silent = stream_socket_server('tcp://127.0.0.1:0');
        $name = stream_socket_get_name($silent, false);
        $port = (int) substr($name, strrpos($name, ':') + 1);

        $this->expectException(PkLockConnectionException::class);
        $this->expectExceptionMessage('no reply within 0.200 s');
        (new PkLockClient('127.0.0.1', $port, ['io_timeout' => 0.2, 'connect_timeout' => 1]))->rpc('ping');
    }

    public function testPhpinfoShowsVersionConnectionsAndSettings(): void
    {
        $client = $this->client();
        $client->lock($this->key());

        ob_start();
        phpinfo(INFO_MODULES);
        $info = ob_get_clean();

        $this->assertStringContainsString('pklock support => enabled', $info);
        $this->assertMatchesRegularExpression('/^version => \d+\.\d+\.\d+/m', $info);
        $address = preg_quote(self::$server->host() . ':' . self::$server->port(), '/');
        $this->assertMatchesRegularExpression("/lockd at {$address} => connected as connection \\d+, 1 locks held/", $info);
        $this->assertStringContainsString('pklock.io_timeout => 5.0 => 5.0', $info);
    }
}
