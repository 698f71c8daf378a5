<?php

// TLS between pklock.so and lockd: a CA and a server certificate for 127.0.0.1 made here with
// the openssl CLI, lockd started with them, and the options tls, tls_ca and tls_verify (and
// their INI defaults) against it; failures are connection exceptions that say what failed.

declare(strict_types=1);

namespace PkLock\Tests;

use PkLock\Testing\LockdServer;
use PkLockClient;
use PkLockConnectionException;
use PkLockLostException;
use RuntimeException;

final class TlsTest extends PkLockTestCase
{
    private static string $dir = '';

    protected static function lockdArguments(): array
    {
        self::$dir = sys_get_temp_dir() . '/pklock-tls-' . getmypid() . '-' . bin2hex(random_bytes(4));
        mkdir(self::$dir);
        self::makeCa('ca');
        self::makeCa('other-ca');
        // The certificate names 127.0.0.1 only, so connecting as "localhost" must fail.
        self::openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
            '-keyout', self::file('server.key'), '-out', self::file('server.csr'), '-subj', '/CN=lockd test server']);
        file_put_contents(self::file('server.ext'), "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n");
        self::openssl(['x509', '-req', '-in', self::file('server.csr'), '-CA', self::file('ca.crt'), '-CAkey', self::file('ca.key'),
            '-CAcreateserial', '-days', '2', '-extfile', self::file('server.ext'), '-out', self::file('server.crt')]);
        return ['--tls-cert', self::file('server.crt'), '--tls-key', self::file('server.key')];
    }

    public static function tearDownAfterClass(): void
    {
        parent::tearDownAfterClass();
        array_map('unlink', glob(self::$dir . '/*'));
        rmdir(self::$dir);
    }

    public function testLocksAndUnlocksOverTlsTrustingTheTestCa(): void
    {
        $options = ['tls' => true, 'tls_ca' => self::file('ca.crt')];
        $client = $this->client($options);
        $other = $this->client($options);
        $this->assertTrue($client->lock($this->key(), 0));
        $this->assertIsInt($client->token($this->key()));
        $this->assertFalse($other->lock($this->key(), 0), 'another owner conflicts, over the same TLS connection');
        $this->assertTrue($client->unlock($this->key()));
        $this->assertTrue($other->lock($this->key(), 0), 'the unlock went through');
        $this->assertTrue($other->isConnected());
    }

    public function testACertificateFromAnotherCaIsRefused(): void
    {
        $this->expectException(PkLockConnectionException::class);
        $this->expectExceptionMessage("cannot connect to lockd at 127.0.0.1:" . self::$server->port() . ' over TLS: TLS handshake failed: '
            . "lockd's certificate is not signed by the CA in tls_ca " . self::file('other-ca.crt'));
        $this->client(['tls' => true, 'tls_ca' => self::file('other-ca.crt')])->lock($this->key(), 0);
    }

    public function testACertificateForAnotherHostIsRefused(): void
    {
        $client = new PkLockClient('localhost', self::$server->port(), ['tls' => true, 'tls_ca' => self::file('ca.crt')]);
        $this->expectException(PkLockConnectionException::class);
        $this->expectExceptionMessage("lockd's certificate is not valid for \"localhost\"");
        $client->lock($this->key(), 0);
    }

    public function testTheSystemCasDoNotTrustTheTestCaButTlsVerifyFalseTakesAnyCertificate(): void
    {
        try {
            $this->client(['tls' => true])->lock($this->key(), 0);
            $this->fail('the test CA is not one of the system CAs');
        } catch (PkLockConnectionException $e) {
            // "not signed by the system's CAs (set tls_ca ...)", or, on a machine without a
            // CA bundle, "no CA certificates found on this system; set tls_ca ...".
            $this->assertStringContainsString('set tls_ca', $e->getMessage());
        }
        $unverified = $this->client(['tls' => true, 'tls_verify' => false]);
        $this->assertTrue($unverified->lock($this->key(), 0));
        $this->assertTrue($unverified->unlock($this->key()));
    }

    public function testIniSettingsAreTheDefaults(): void
    {
        $saved = array_map('ini_get', ['tls' => 'pklock.tls', 'ca' => 'pklock.tls_ca', 'verify' => 'pklock.tls_verify']);
        try {
            ini_set('pklock.tls', 'On');
            ini_set('pklock.tls_ca', self::file('ca.crt'));
            $this->assertTrue($this->client()->lock($this->key('verified'), 0));

            ini_set('pklock.tls_ca', self::file('other-ca.crt'));
            try {
                $this->client()->rpc('ping');
                $this->fail('pklock.tls_ca is the CA to trust');
            } catch (PkLockConnectionException $e) {
                $this->assertStringContainsString('not signed by the CA in tls_ca', $e->getMessage());
            }

            ini_set('pklock.tls_verify', '0');
            $this->assertTrue($this->client()->lock($this->key('unverified'), 0));

            ini_set('pklock.tls', '0');
            $this->expectException(PkLockConnectionException::class);
            $this->expectExceptionMessage('this lockd listener speaks TLS only');
            $this->client()->rpc('ping');
        } finally {
            ini_set('pklock.tls', $saved['tls']);
            ini_set('pklock.tls_ca', $saved['ca']);
            ini_set('pklock.tls_verify', $saved['verify']);
        }
    }

    public function testAPlainClientIsToldTheServerSpeaksTls(): void
    {
        $this->expectException(PkLockConnectionException::class);
        $this->expectExceptionMessage('refused by the server: this lockd listener speaks TLS only');
        $this->client()->lock($this->key(), 0);
    }

    public function testAServerWithoutTlsIsAConnectionErrorThatSaysSo(): void
    {
        $plain = LockdServer::start();
        try {
            $this->expectException(PkLockConnectionException::class);
            $this->expectExceptionMessage('the server did not answer in TLS; is lockd started with --tls-cert and --tls-key?');
            (new PkLockClient($plain->host(), $plain->port(), ['tls' => true, 'tls_ca' => self::file('ca.crt')]))->rpc('ping');
        } finally {
            $plain->stop();
        }
    }

    public function testLocksLostWithTheServerAreReportedOverTlsWhetherItClosedOrDied(): void
    {
        $options = ['tls' => true, 'tls_ca' => self::file('ca.crt')];
        foreach (['restart', 'kill'] as $how) {
            $holder = $this->client($options);
            $bystander = $this->client($options);
            $this->assertTrue($holder->lock($this->key($how), 0));
            if ($how === 'kill') {
                self::$server->kill(); // no close_notify: the TLS stream just ends
            }
            self::$server->restart();
            $this->assertFalse($bystander->isConnected(), "{$how}: isConnected() notices the end of the TLS stream");
            try {
                $holder->lock($this->key("{$how}-other"), 0);
                $this->fail("{$how}: the next call must say the locks are gone");
            } catch (PkLockLostException $e) {
                $this->assertStringContainsString('(closed by the server)', $e->getMessage());
                $this->assertStringContainsString($this->key($how), $e->getMessage());
            }
            $this->assertTrue($holder->lock($this->key($how), 0), "{$how}: the next call reconnects over TLS");
            $holder->close();
        }
    }

    public function testAMissingCaFileIsAConnectionErrorThatNamesIt(): void
    {
        $this->expectException(PkLockConnectionException::class);
        $this->expectExceptionMessage('over TLS: cannot read tls_ca ' . self::file('missing.crt'));
        $this->client(['tls' => true, 'tls_ca' => self::file('missing.crt')])->rpc('ping');
    }

    /** @requires extension pcntl */
    public function testAForkedChildLeavesTheParentsTlsSessionIntact(): void
    {
        $options = ['tls' => true, 'tls_ca' => self::file('ca.crt')];
        $parent = $this->client($options);
        $this->assertTrue($parent->lock($this->key(), 0));
        [$toParent, $inChild] = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);

        $pid = pcntl_fork();
        if ($pid === 0) {
            fclose($toParent);
            // Its own TLS connection, on which the parent is another owner.
            $report = ['relock' => $parent->lock($this->key(), 0), 'ping' => $parent->rpc('ping')];
            fwrite($inChild, json_encode($report) . "\n");
            exit(0);
        }
        fclose($inChild);
        stream_set_timeout($toParent, 20);
        $report = json_decode((string) fgets($toParent), true);
        pcntl_waitpid($pid, $status);

        $this->assertSame(['relock' => false, 'ping' => ['pong' => true]], $report);
        $this->assertSame(['pong' => true], $parent->rpc('ping'), "the parent's TLS session survived the child");
        $this->assertTrue($parent->unlock($this->key()));
    }

    public function testBadTlsOptionsAreValueErrors(): void
    {
        foreach ([['tls' => 1], ['tls_verify' => 'no'], ['tls_ca' => '']] as $options) {
            try {
                $this->client($options);
                $this->fail('refused: ' . json_encode($options));
            } catch (\ValueError | \TypeError $e) {
                $this->assertStringContainsString(array_key_first($options), $e->getMessage());
            }
        }
    }

    private static function file(string $name): string
    {
        return self::$dir . '/' . $name;
    }

    private static function makeCa(string $name): void
    {
        self::openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
            '-keyout', self::file("{$name}.key"), '-out', self::file("{$name}.crt"), '-subj', "/CN=pklock {$name} " . basename(self::$dir)]);
    }

    /** @param list<string> $args */
    private static function openssl(array $args): void
    {
        $process = proc_open(array_merge(['openssl'], $args), [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        $output = stream_get_contents($pipes[1]) . stream_get_contents($pipes[2]);
        if (proc_close($process) !== 0) {
            throw new RuntimeException('openssl ' . implode(' ', $args) . " failed:\n{$output}");
        }
    }
}
