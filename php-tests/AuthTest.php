<?php

// Authentication from PHP: the auth_key option and the pklock.auth_key INI default drive
// lockd's challenge-response (the key is proven, never sent), a wrong key is a
// PkLockAuthException, objects with different keys never share a connection, and a server
// that cannot prove it knows the key (a fake one) is refused before any lock is asked of it.

declare(strict_types=1);

namespace PkLock\Tests;

use PkLockAuthException;
use PkLockClient;

final class AuthTest extends PkLockTestCase
{
    private const KEY = 'auth-test-key-7f3a';

    protected static function lockdArguments(): array
    {
        return ['--auth-key', self::KEY];
    }

    public function testTheRightKeyAuthenticatesAndAWrongOneIsAnAuthException(): void
    {
        $withKey = $this->client(['auth_key' => self::KEY]);
        $this->assertTrue($withKey->lock($this->key(), 0));
        $this->assertTrue($withKey->isHeld($this->key()));
        $withKey->close();

        try {
            $this->client(['auth_key' => 'wrong'])->rpc('ping');
            $this->fail('a wrong key is refused');
        } catch (PkLockAuthException $e) {
            $this->assertStringContainsString('auth failed: wrong proof', $e->getMessage());
        }
    }

    public function testAnObjectWithoutTheKeyDoesNotRideOnAnotherObjectsConnection(): void
    {
        $withKey = $this->client(['auth_key' => self::KEY]);
        $this->assertTrue($withKey->lock($this->key(), 0), 'connected and authenticated');
        foreach ([[], ['auth_key' => 'wrong']] as $options) {
            try {
                $this->client($options)->lock($this->key('other'), 0);
                $this->fail('refused: ' . json_encode($options));
            } catch (PkLockAuthException $e) {
                $this->assertStringContainsString('auth', $e->getMessage());
            }
        }
        $this->assertTrue($withKey->unlock($this->key()), 'the authenticated connection is unharmed');
    }

    /** @return array<string, array{string}> */
    public static function impostors(): array
    {
        return [
            'skips the challenge' => ['impostor-skips-challenge'],
            'cannot prove the key' => ['impostor-wrong-proof'],
        ];
    }

    /** @dataProvider impostors */
    public function testAServerThatCannotProveItKnowsTheKeyIsRefused(string $mode): void
    {
        $fake = PhpChild::script(__DIR__ . '/fixtures/fake-lockd.php', $mode);
        $port = (int) $fake->readLine();
        $client = new PkLockClient('127.0.0.1', $port, ['auth_key' => self::KEY]);
        try {
            $client->lock($this->key(), 0);
            $this->fail('a server that does not prove it knows the key is refused');
        } catch (PkLockAuthException $e) {
            $this->assertStringContainsString('refusing it', $e->getMessage());
        }
        $client->close();

        $received = [];
        while (($line = $fake->readLine()) !== 'closed') {
            $received[] = $line;
        }
        $commands = array_map(fn (string $line): string => json_decode($line, true)['command'], $received);
        $this->assertNotContains('lock', $commands, 'no lock is asked of a server that is not trusted');
        $this->assertStringNotContainsString(self::KEY, implode("\n", $received), 'the key never goes on the wire');
    }

    public function testTheIniKeyIsTheDefaultOnlyPhpIniSetsItAndPhpinfoHidesIt(): void
    {
        $child = PhpChild::start(sprintf(
            <<<'PHP'
                [$host, $port] = [%s, %d];
                echo json_encode((new PkLockClient($host, $port))->rpc('ping')), "\n";
                echo ini_set('pklock.auth_key', 'changed') === false ? 'ini_set refused' : 'ini_set allowed', "\n";
                ob_start();
                phpinfo(INFO_MODULES);
                $info = ob_get_clean();
                echo preg_match('/^pklock\.auth_key => \(set, hidden\) => \(set, hidden\)$/m', $info) ? 'hidden' : 'not shown as hidden', "\n";
                echo str_contains($info, %s) ? 'key shown' : 'key not shown', "\n";
                try {
                    (new PkLockClient($host, $port, ['auth_key' => null]))->rpc('ping');
                } catch (PkLockAuthException $e) {
                    echo "null means no key\n";
                }
                PHP,
            var_export(self::$server->host(), true),
            self::$server->port(),
            var_export(self::KEY, true)
        ), ['pklock.auth_key' => self::KEY]);

        $this->assertSame('{"pong":true}', $child->readLine());
        $this->assertSame('ini_set refused', $child->readLine());
        $this->assertSame('hidden', $child->readLine());
        $this->assertSame('key not shown', $child->readLine());
        $this->assertSame('null means no key', $child->readLine());
    }

    protected function client(array $options = ['auth_key' => self::KEY]): PkLockClient
    {
        return parent::client($options);
    }
}
