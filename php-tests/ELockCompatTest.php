<?php

// lockd's eLock listener driven from PHP exactly as php-elock-client drives an eLock server:
// fsockopen() to port 11400, one "$command\n" written per call, trim(fgets()) read back,
// keys sent as sha1($key), and the response codes that client maps (200, 409, 403, 423).
// The client's own classes are not in Debian, so this test speaks its bytes itself; a key
// locked through eLock is the same key for PkLockClient.

declare(strict_types=1);

namespace PkLock\Tests;

final class ELockCompatTest extends PkLockTestCase
{
    /** php-elock-client always connects to port 11400; a loopback address of our own keeps it free. */
    private const HOST = '127.0.114.0';
    private const PORT = 11400;

    protected static function lockdArguments(): array
    {
        return ['--elock-listen', self::HOST . ':' . self::PORT];
    }

    /** @return resource */
    private function connect()
    {
        $socket = @fsockopen(self::HOST, self::PORT, $errno, $error, 5.0);
        $this->assertNotFalse($socket, "connect to the eLock listener: {$error}");
        stream_set_timeout($socket, 10);
        return $socket;
    }

    /** @param resource $socket @return array{int, string} the code and the message */
    private function send($socket, string $command): array
    {
        fwrite($socket, "{$command}\n");
        $line = trim((string) fgets($socket));
        $parts = explode(' ', $line, 2);
        $this->assertCount(2, $parts, "a reply is '<code> <message>': {$line}");
        $this->assertIsNumeric($parts[0]);
        return [(int) $parts[0], $parts[1]];
    }

    /** @param resource $socket @return list<string> the lines after the first, up to END */
    private function listing($socket, string $command): array
    {
        [$code] = $this->send($socket, $command);
        $this->assertSame(200, $code);
        $lines = [];
        while (($line = trim((string) fgets($socket))) !== 'END') {
            $lines[] = $line;
        }
        return $lines;
    }

    public function testLockUnlockAndTheirCodesAsTheClientReadsThem(): void
    {
        $key = sha1($this->key());
        [$a, $b] = [$this->connect(), $this->connect()];
        $this->assertSame(200, $this->send($a, "lock {$key} 0")[0]);
        $this->assertSame(409, $this->send($b, "lock {$key} 0")[0], 'lock() returns false');
        $this->assertSame(403, $this->send($b, "unlock {$key}")[0], 'unlock() returns false');
        $this->assertSame(200, $this->send($a, "unlock {$key}")[0]);
        $this->assertSame(200, $this->send($b, "lock {$key} 0")[0]);
        $this->assertSame(200, $this->send($b, 'unlock_all')[0]);
        $this->assertSame(200, $this->send($a, 'quit')[0]);
    }

    public function testAWaitingLockIsGrantedWhenTheHolderUnlocks(): void
    {
        $key = sha1($this->key());
        $holder = $this->connect();
        $this->assertSame(200, $this->send($holder, "lock {$key} 0")[0]);
        $waiter = $this->child(sprintf(
            <<<'PHP'
                $s = fsockopen(%s, %d);
                fwrite($s, "lock %s 30\n");
                echo trim(fgets($s)), "\n";
                PHP,
            var_export(self::HOST, true),
            self::PORT,
            $key
        ));
        $this->waitUntil(fn (): bool => $this->waitersOn($key) === 1, 'the child waits');
        $this->send($holder, "unlock {$key}");
        $this->assertStringStartsWith('200 ', $waiter->readLine());
    }

    public function testStatsSessionIdsAndTakeOver(): void
    {
        $key = sha1($this->key());
        $first = $this->connect();
        $stats = $this->listing($first, 'stats');
        $this->assertMatchesRegularExpression('/^STAT clients \d+$/', $stats[0]);
        $this->assertMatchesRegularExpression('/^STAT locks \d+$/', $stats[1]);
        $this->assertMatchesRegularExpression('/^STAT monitoring \d+$/', $stats[2]);

        $this->assertSame(200, $this->send($first, 'set_timeout 5000')[0]);
        $this->send($first, "lock {$key} 0");
        [, $sessionId] = $this->send($first, 'conn_id');
        fclose($first);

        $second = $this->connect();
        // The server learns of the close asynchronously; until then the session is still
        // connected, and a takeover is refused.
        $reply = [];
        $this->waitUntil(function () use ($second, $sessionId, &$reply): bool {
            $reply = $this->send($second, "conn_id {$sessionId}");
            return $reply !== [403, 'Cannot take over a session that is still connected'];
        }, 'the server has seen the first connection close');
        $this->assertSame([200, 'Resumed'], $reply, 'setSessionId()');
        $this->assertSame(200, $this->send($second, "unlock {$key}")[0], 'the lock came back with the session');
    }

    public function testDebugListsSessionsLocksAndRequests(): void
    {
        $key = sha1($this->key());
        $socket = $this->connect();
        $this->send($socket, "lock {$key} 0");
        $sessions = $locks = [];
        foreach ($this->listing($socket, 'debug') as $line) {
            [$kind, $args] = explode(' ', $line, 2);
            match ($kind) {
                'SESSION' => $sessions[] = json_decode($args, false, 512, JSON_THROW_ON_ERROR),
                'LOCK' => $locks[] = $args,
                'REQUEST' => null,
            };
        }
        $this->assertNotEmpty($sessions);
        $this->assertIsInt($sessions[0]->id);
        $this->assertContains($key, array_map(fn (string $l): string => explode(' ', $l)[0], $locks));
    }

    public function testAWaitThatWouldDeadlockIs423(): void
    {
        [$x, $y] = [sha1($this->key('x')), sha1($this->key('y'))];
        [$a, $b] = [$this->connect(), $this->connect()];
        $this->send($a, "lock {$x} 0");
        $this->send($b, "lock {$y} 0");
        fwrite($a, "lock {$y} 10\n");
        $this->waitUntil(fn (): bool => $this->waitersOn($y) === 1, 'a waits for y');
        [$code, $message] = $this->send($b, "lock {$x} 10");
        $this->assertSame(423, $code, 'DeadlockException');
        $this->assertStringStartsWith('Deadlock', $message);
        $this->send($b, "unlock {$y}");
        $this->assertStringStartsWith('200 ', trim((string) fgets($a)));
    }

    public function testAKeyLockedThroughELockIsLockedForPkLockClient(): void
    {
        $key = sha1($this->key());
        $socket = $this->connect();
        $this->assertSame(200, $this->send($socket, "lock {$key} 0")[0]);
        $client = $this->client();
        $this->assertFalse($client->lock($key, 0));
        $this->send($socket, "unlock {$key}");
        $this->assertTrue($client->lock($key, 0));
        $this->assertSame(409, $this->send($socket, "lock {$key} 0")[0]);
    }
}
