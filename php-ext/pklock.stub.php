<?php

// IDE stub for pklock.so (PkLockClient and its exceptions). Never load it next to the
// extension: it would redeclare the classes. Keep it in step with php-ext/src/client.rs and
// php-ext/src/exceptions.rs (the signatures are those ReflectionMethod reports).
//
// INI settings (all PHP_INI_ALL):
//   pklock.default_host     = 127.0.0.1  host when the constructor's $host is null
//   pklock.default_port     = 11300      port when the constructor's $port is null
//   pklock.connect_timeout  = 2.0        seconds, when $options['connect_timeout'] is absent
//   pklock.io_timeout       = 5.0        seconds, when $options['io_timeout'] is absent

/**
 * A client of lockd. Constructing needs no server: the first call connects. All objects of a
 * process share one socket per server address, kept across requests (PHP-FPM), but each
 * object is its own lock owner: two objects conflict exactly as two processes do.
 *
 * Locks are released by unlock()/unlockAll(), when the object is destroyed, at request end,
 * and by the server when the connection dies. After pcntl_fork() a child never uses the
 * parent's socket; the parent's locks stay the parent's.
 */
class PkLockClient
{
    /**
     * @param string|null $host    null: the pklock.default_host INI setting
     * @param int|null    $port    null: the pklock.default_port INI setting
     * @param array{connect_timeout?: int|float, io_timeout?: int|float, auth_key?: string}|null $options
     *        connect_timeout and io_timeout in seconds (io_timeout bounds every reply beyond
     *        the lock wait asked for); auth_key is sent in `hello` when the socket is opened
     * @throws ValueError for an empty host, a port outside 1..65535, an unknown or bad option
     */
    public function __construct(?string $host = null, ?int $port = null, ?array $options = null) {}

    /**
     * Takes the lock on $keys: all of them or none (one fencing token for the grant).
     *
     * @param string|list<string> $keys
     * @param float|null $wait seconds the server may queue the request (FIFO); 0 tries once;
     *                         null waits as long as it takes
     * @param bool $shared     shared (many holders) instead of exclusive
     * @return bool true when granted, false when the wait ran out
     * @throws PkLockDeadlockException when waiting would close a cycle of waiters
     * @throws PkLockServerException   for the server's other refusals (too many locks, bad key, ...)
     * @throws PkLockLostException     when locks this object held were lost with the connection
     * @throws PkLockConnectionException when lockd cannot be reached or stops answering
     */
    public function lock(mixed $keys, ?float $wait = 30.0, bool $shared = false): bool {}

    /**
     * Releases those of $keys this object holds. Does not wait for the server's reply: a
     * problem with it is thrown by the next call.
     *
     * @param string|list<string> $keys
     * @return bool true when this object held every one of $keys
     */
    public function unlock(mixed $keys): bool {}

    /** Releases every lock this object holds. */
    public function unlockAll(): void {}

    /** The fencing token of the lock this object holds on $key, or null. */
    public function token(string $key): ?int {}

    /**
     * Locks $keys, runs $fn, always unlocks, and returns what $fn returned.
     *
     * @param string|list<string> $keys
     * @throws PkLockTimeoutException when $wait runs out before the lock is granted
     */
    public function synchronized(mixed $keys, callable $fn, ?float $wait = 30.0, bool $shared = false): mixed {}

    /**
     * Sends any lockd command and returns its result. PHP values map to JSON and back:
     * lists ↔ arrays, other arrays and stdClass/JsonSerializable ↔ objects (decoded as arrays,
     * in the server's member order), int ↔ integer, float ↔ number with a fraction; NAN, INF,
     * non-UTF-8 strings, resources and other objects are ValueError/TypeError. Locks taken
     * through rpc() are not tracked by the object (token() does not know them); request end
     * releases them.
     *
     * @param array<string, mixed>|null $parameters a map (a JSON object); null or [] is {}
     * @param float|null $timeout seconds to wait for the reply; null: the io_timeout option
     *        (for `lock`, plus its `wait`, and no limit when it has none)
     */
    public function rpc(string $command, ?array $parameters = null, ?float $timeout = null): mixed {}

    /** Whether this process has a live connection to this object's server (never connects). */
    public function isConnected(): bool {}

    /**
     * Releases this object's locks and closes the process's connection unless other objects
     * hold locks through it. The object stays usable: the next call reconnects.
     */
    public function close(): void {}
}

/**
 * Base class of every exception pklock.so throws (bad arguments are TypeError/ValueError).
 * These classes cannot be instantiated from PHP: ext-php-rs 0.16 gives each Rust class a
 * constructor of its own, which refuses; only pklock.so throws them.
 */
class PkLockException extends RuntimeException {}

/** lockd cannot be reached, the connection broke, a reply did not come in time, or the protocol broke. */
class PkLockConnectionException extends PkLockException {}

/** The connection broke while this object held locks: the server has released them. */
class PkLockLostException extends PkLockConnectionException {}

/** synchronized() could not get its locks within the wait. */
class PkLockTimeoutException extends PkLockException {}

/** lockd answered with an error; the subclasses name its code. */
class PkLockServerException extends PkLockException {}

/** deadlock: waiting would close a cycle in the wait-for graph; refused at once. */
class PkLockDeadlockException extends PkLockServerException {}

/** too_many_locks */
class PkLockTooManyLocksException extends PkLockServerException {}

/** too_many_waiters */
class PkLockTooManyWaitersException extends PkLockServerException {}

/** too_many_keys */
class PkLockTooManyKeysException extends PkLockServerException {}

/** too_many_clients */
class PkLockTooManyClientsException extends PkLockServerException {}

/** bad_key: a key longer than the server allows. */
class PkLockBadKeyException extends PkLockServerException {}

/** owner_busy: this owner already has a lock request waiting. */
class PkLockOwnerBusyException extends PkLockServerException {}

/** bad_request: the server refused the request's shape or parameters. */
class PkLockBadRequestException extends PkLockServerException {}

/** unknown_command */
class PkLockUnknownCommandException extends PkLockServerException {}

/** frame_too_large: the request exceeded the server's --max-frame. */
class PkLockFrameTooLargeException extends PkLockServerException {}

/** auth_required / auth_failed: the server needs the auth_key option, or refused it. */
class PkLockAuthException extends PkLockServerException {}

/** shutting_down */
class PkLockShuttingDownException extends PkLockServerException {}
