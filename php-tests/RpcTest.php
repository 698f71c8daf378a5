<?php

// rpc(): PHP values to JSON and back through the real server (lists vs maps, int vs float,
// nested arrays, unicode, big ints, empty arrays), server errors as their own exception
// classes, and clear errors for values JSON cannot hold and for bad arguments.

declare(strict_types=1);

namespace PkLock\Tests;

use JsonSerializable;
use PkLockBadKeyException;
use PkLockBadRequestException;
use PkLockClient;
use PkLockServerException;
use PkLockTooManyKeysException;
use PkLockUnknownCommandException;
use stdClass;
use TypeError;
use ValueError;

final class RpcTest extends PkLockTestCase
{
    public function testRpcCannotChangeTheSharedConnectionForOtherObjects(): void
    {
        $key = $this->key();
        $holder = $this->client();
        $this->assertTrue($holder->lock($key));
        $raw = $this->client();
        foreach ([
            fn () => $raw->rpc('hello', ['auth_key' => 'x']),
            fn () => $raw->rpc('unlock', ['keys' => $key, 'defer_reply' => true]),
        ] as $call) {
            try {
                $call();
                $this->fail('refused');
            } catch (\ValueError $e) {
                $this->assertStringContainsString('rpc', $e->getMessage());
            }
        }
        // A bare release_all is owner 0's (rpc()'s default owner), not every object's.
        $this->assertSame(['released' => 0, 'cancelled' => 0], $raw->rpc('release_all'));
        $this->assertSame(1, $this->holdersOf($key));
        $this->assertNotNull($holder->token($key));
    }

    public function testARequestLargerThanTheServerTakesIsRefusedWithoutLosingTheConnection(): void
    {
        $key = $this->key();
        $holder = $this->client();
        $this->assertTrue($holder->lock($key));
        $big = $this->client();
        try {
            $big->lock(str_repeat('k', 2_000_000), 0);
            $this->fail('refused');
        } catch (\PkLockFrameTooLargeException $e) {
            $this->assertStringContainsString('not sent', $e->getMessage());
        }
        $this->assertTrue($holder->unlock($key), 'the other object still holds its lock on a live connection');
    }

    public function testArrayKeysThatAreNotUtf8AreValueErrors(): void
    {
        $client = $this->client();
        foreach ([
            'lock keys' => fn () => $client->lock(["\xff" => 'a'], 0),
            'options' => fn () => new PkLockClient(null, null, ["\xff" => 1]),
            'parameters' => fn () => $client->rpc('check', ['key' => 'x', 'token' => 1, "\xff" => 1]),
            'nested' => fn () => $client->rpc('check', ['key' => ['a' => ["\xfe" => 1]], 'token' => 1]),
        ] as $where => $call) {
            try {
                $call();
                $this->fail("refused: $where");
            } catch (\ValueError $e) {
                $this->assertStringContainsString('has a key that is not valid UTF-8', $e->getMessage(), $where);
            }
        }
    }

    public function testAKeyNamedTwiceIsOneKey(): void
    {
        $key = $this->key();
        $client = $this->client();
        $this->assertTrue($client->lock([$key, $key]));
        $this->assertTrue($client->unlock([$key, $key]));
    }

    public function testRpcLockWaitsItsOwnWaitBeyondTheIoTimeout(): void
    {
        $key = $this->key();
        $holder = $this->client();
        $this->assertTrue($holder->lock($key));
        $impatient = $this->client(['io_timeout' => 0.2]);
        // The server answers after the wait (0.6 s), longer than the io_timeout: without a
        // $timeout, rpc() allows the lock's wait on top of io_timeout.
        $reply = $impatient->rpc('lock', ['keys' => $key, 'wait' => 0.6, 'owner' => 99]);
        $this->assertSame(['granted' => false], $reply);
        $this->assertTrue($impatient->isConnected(), 'no timeout, no broken connection');
    }

    public function testAwkwardValuesRoundTripThroughTheServer(): void
    {
        $client = $this->client();
        $keys = [$this->key('ключ'), $this->key('鍵🔒'), $this->key("tab\tquote\"back\\slash")];
        $owner = PHP_INT_MAX;

        $granted = $client->rpc('lock', ['keys' => $keys, 'mode' => 'shared', 'wait' => 0.0, 'owner' => $owner]);
        $this->assertTrue($granted['granted']);
        $this->assertIsInt($granted['token']);

        $listed = $client->rpc('locks', ['prefix' => static::class]);
        $byKey = array_column($listed['keys'], null, 'key');
        sort($keys);
        $listedKeys = array_keys($byKey);
        sort($listedKeys);
        $this->assertSame($keys, $listedKeys, 'unicode and escapes survive both directions');
        $holder = $byKey[$keys[0]]['holders'][0];
        $this->assertSame($owner, $holder['owner'], 'PHP_INT_MAX survives as an int');
        $this->assertSame($granted['token'], $holder['token']);
        $this->assertIsFloat($holder['held_for']);
        $this->assertStringEndsWith(' pid ' . getmypid(), $holder['client'], 'pklock.so names this process in hello');
        $this->assertSame([], $byKey[$keys[0]]['waiters'], 'an empty list comes back as []');
        $this->assertFalse($listed['truncated']);

        $released = $client->rpc('unlock', ['keys' => $keys, 'owner' => $owner]);
        $this->assertEqualsCanonicalizing($keys, $released['released']);
    }

    public function testIntsStayIntsAndFloatsStayFloats(): void
    {
        $client = $this->client();

        $this->assertSame(['valid' => false], $client->rpc('check', ['key' => $this->key(), 'token' => PHP_INT_MAX]));
        $this->assertSame(['keys' => [], 'truncated' => false], $client->rpc('locks', ['prefix' => $this->key(), 'limit' => 1]));
        try {
            $client->rpc('locks', ['prefix' => $this->key(), 'limit' => 1.0]);
            $this->fail('1.0 must reach the server as a float, which `limit` refuses');
        } catch (PkLockBadRequestException $e) {
            $this->assertStringContainsString('floating point', $e->getMessage());
        }
        $stat = $client->rpc('stat');
        $this->assertIsFloat($stat['uptime']);
        $this->assertIsInt($stat['connections']);
    }

    public function testEmptyParametersAreAnEmptyObject(): void
    {
        $client = $this->client();

        $this->assertSame(['pong' => true], $client->rpc('ping', []));
        $this->assertSame(['pong' => true], $client->rpc('ping'));
        $this->assertArrayHasKey('uptime', $client->rpc('stat', []));
    }

    public function testObjectsThatJsonCanHoldAreSent(): void
    {
        $client = $this->client();
        $key = $this->key();
        $keys = new class ($key) implements JsonSerializable {
            public function __construct(private string $key)
            {
            }

            public function jsonSerialize(): mixed
            {
                return [$this->key];
            }
        };
        $object = new stdClass();
        $object->nested = ['a' => 1];

        $this->assertTrue($client->rpc('lock', ['keys' => $keys, 'wait' => 0, 'owner' => 1])['granted']);
        $this->assertSame($key, $client->rpc('locks', ['prefix' => $key])['keys'][0]['key']);
        $this->assertSame(['released' => [$key], 'not_held' => []], $client->rpc('unlock', ['keys' => $key, 'owner' => 1]));
        // ping takes no parameters: the server's refusal names a field it received, which
        // shows that the objects converted and went out.
        try {
            $client->rpc('ping', ['object' => $object, 'empty' => new stdClass()]);
            $this->fail('ping refuses parameters');
        } catch (\PkLockBadRequestException $e) {
            $this->assertMatchesRegularExpression('/unknown field `(object|empty)`/', $e->getMessage());
        }
    }

    /** @dataProvider valuesJsonCannotHold */
    public function testValuesJsonCannotHoldAreClearErrors(mixed $value, string $class, string $message): void
    {
        $this->expectException($class);
        $this->expectExceptionMessage($message);
        $this->client()->rpc('ping', ['x' => ['y' => [$value]]]);
    }

    public function valuesJsonCannotHold(): array
    {
        $recursive = [];
        $recursive['self'] = &$recursive;
        return [
            'NAN' => [NAN, ValueError::class, "\$parameters['x']['y'][0]: NaN cannot be represented in JSON"],
            'INF' => [INF, ValueError::class, 'cannot be represented in JSON'],
            'binary string' => ["\xff\xfe", ValueError::class, 'is not valid UTF-8'],
            'resource' => [STDIN, TypeError::class, 'a resource cannot be sent as JSON'],
            'closure' => [fn () => 1, TypeError::class, 'an object of class Closure cannot be sent as JSON'],
            'recursion' => [$recursive, ValueError::class, 'a recursive reference?'],
        ];
    }

    public function testParametersMustBeAMap(): void
    {
        $this->expectException(ValueError::class);
        $this->expectExceptionMessage('$parameters: must be an array with string keys');
        $this->client()->rpc('ping', ['a', 'b']);
    }

    public function testServerErrorsHaveTheirOwnClasses(): void
    {
        $client = $this->client();

        $this->assertThrowsClass(PkLockUnknownCommandException::class, fn () => $client->rpc('no_such_command'));
        $this->assertThrowsClass(PkLockBadRequestException::class, fn () => $client->rpc('lock', ['keys' => 'a', 'wiat' => 1]));
        $this->assertThrowsClass(PkLockBadKeyException::class, fn () => $client->lock(str_repeat('k', 5000), 0));
        $tooMany = array_map(fn (int $i): string => $this->key((string) $i), range(1, 2000));
        $this->assertThrowsClass(PkLockTooManyKeysException::class, fn () => $client->lock($tooMany, 0));
        $this->assertTrue($client->lock($this->key(), 0), 'the connection carries on after server errors');
    }

    /** @dataProvider badArguments */
    public function testBadArgumentsNameTheArgument(callable $call, string $class, string $message): void
    {
        $this->expectException($class);
        $this->expectExceptionMessage($message);
        $call(new PkLockClient('127.0.0.1', 1));
    }

    public function badArguments(): array
    {
        return [
            'keys of the wrong type' => [fn ($c) => $c->lock(42), TypeError::class, 'Argument #1 ($keys) must be of type string|array, int given'],
            'no keys' => [fn ($c) => $c->lock([]), ValueError::class, 'Argument #1 ($keys) must not be an empty array'],
            'empty key' => [fn ($c) => $c->unlock(['a', '']), ValueError::class, 'Argument #1 ($keys) must not contain an empty key at index 1'],
            'non-string key' => [fn ($c) => $c->lock(['a', null]), TypeError::class, 'Argument #1 ($keys) must contain only strings, null given at index 1'],
            'negative wait' => [fn ($c) => $c->lock('a', -1), ValueError::class, 'Argument #2 ($wait) must be a number of seconds'],
            'NAN wait' => [fn ($c) => $c->synchronized('a', fn () => 1, NAN), ValueError::class, 'Argument #3 ($wait)'],
            'wait of the wrong type' => [fn ($c) => $c->lock('a', 'soon'), TypeError::class, 'wait'],
            'not callable' => [fn ($c) => $c->synchronized('a', 'no_such_function'), TypeError::class, 'fn'],
            'port out of range' => [fn ($c) => new PkLockClient('127.0.0.1', 70000), ValueError::class, 'Argument #2 ($port) must be between 1 and 65535'],
            'empty host' => [fn ($c) => new PkLockClient(''), ValueError::class, 'Argument #1 ($host) must not be empty'],
            'unknown option' => [fn ($c) => new PkLockClient('127.0.0.1', 1, ['io_timout' => 1]), ValueError::class, "(\$options) ['io_timout'] is not an option"],
            'bad timeout option' => [fn ($c) => new PkLockClient('127.0.0.1', 1, ['io_timeout' => 0]), ValueError::class, "['io_timeout'] must be a number of seconds above 0"],
            'empty command' => [fn ($c) => $c->rpc(''), ValueError::class, 'Argument #1 ($command) must not be empty'],
            'bad rpc timeout' => [fn ($c) => $c->rpc('ping', [], -2.0), ValueError::class, 'Argument #3 ($timeout)'],
        ];
    }

    public function testExceptionHierarchy(): void
    {
        $this->assertTrue(is_subclass_of(\PkLockException::class, \RuntimeException::class));
        foreach ([\PkLockConnectionException::class, \PkLockTimeoutException::class, PkLockServerException::class] as $class) {
            $this->assertTrue(is_subclass_of($class, \PkLockException::class), $class);
        }
        $this->assertTrue(is_subclass_of(\PkLockLostException::class, \PkLockConnectionException::class));
        $this->assertTrue(is_subclass_of(\PkLockDeadlockException::class, PkLockServerException::class));
    }

    private function assertThrowsClass(string $class, callable $call): void
    {
        try {
            $call();
            $this->fail("expected {$class}");
        } catch (\Throwable $e) {
            $this->assertSame($class, get_class($e), $e->getMessage());
        }
    }
}
