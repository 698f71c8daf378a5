<?php

// IDE stub for pklock.so (PkLockClient and its exceptions). Never load it next to the
// extension: it would redeclare the classes. Keep it in step with php-ext/src/client.rs and
// php-ext/src/exceptions.rs (the signatures are those ReflectionMethod reports).
//
// INI settings (PHP_INI_ALL unless said):
//   pklock.servers          = (empty)    node list (h1:p1,h2:p2) when the constructor's $host is null
//   pklock.node_order       = host       how a node list is tried, when $options['node_order'] is
//                                        absent: host (one order per host name: a host's processes
//                                        share a node), random (per connection) or list (as written)
//   pklock.default_host     = 127.0.0.1  host when $host is null and pklock.servers is empty
//   pklock.default_port     = 11300      port when the constructor's $port is null
//   pklock.connect_timeout  = 2.0        seconds, when $options['connect_timeout'] is absent
//   pklock.io_timeout       = 5.0        seconds, when $options['io_timeout'] is absent
//   pklock.auth_key         = ""         key when $options['auth_key'] is absent; PHP_INI_SYSTEM
//                                        (php.ini, or php_admin_value in a php-fpm pool);
//                                        phpinfo() shows only whether it is set
//   pklock.tls              = 0          connect with TLS, when $options['tls'] is absent
//   pklock.tls_ca           = ""         PEM file of the CA to trust; empty: the system's CAs
//   pklock.tls_verify       = 1          0 accepts any certificate (tests only)

/**
 * A client of lockd. Constructing needs no server: the first call connects. All objects of a
 * process share one socket per server address, kept across requests (PHP-FPM), but each
 * object is its own lock owner: two objects conflict exactly as two processes do.
 *
 * Locks are released by unlock()/unlockAll(), when the object is destroyed, at request end,
 * and by the server when the connection dies. After pcntl_fork() a child never uses the
 * parent's socket; the parent's locks stay the parent's.
 *
 * Given the nodes of a lockd cluster, locks survive the loss of the node connected to: the
 * next call that does I/O resumes the session on another node (docs/CLUSTER.md, "Clients").
 */
class PkLockClient
{
    /**
     * @param string|null $host    a host, or the nodes of a lockd cluster: 'h1:p1,h2:p2' ([v6]:port for
     *                             IPv6; $port serves entries without one); null: the pklock.servers
     *                             INI setting, or when that is empty pklock.default_host
     * @param int|null    $port    null: the pklock.default_port INI setting
     * @param array{connect_timeout?: int|float, io_timeout?: int|float, auth_key?: string|null, tls?: bool, tls_ca?: string, tls_verify?: bool, node_order?: 'host'|'random'|'list'}|null $options
     *        connect_timeout and io_timeout in seconds (io_timeout bounds every reply beyond
     *        the lock wait asked for); auth_key (default pklock.auth_key, null for none) is
     *        lockd's --auth-key: when the socket is opened the client proves it knows the key
     *        and makes lockd prove it too (challenge-response; the key is never sent);
     *        tls connects with TLS (lockd --tls-cert), verifying lockd's certificate against
     *        the CA in the PEM file tls_ca (default: the system's CAs) and the host name given
     *        here; tls_verify false accepts any certificate (tests only). TLS ones default to INI.
     *        node_order (default pklock.node_order) is the order in which a node list is
     *        tried: 'host', 'random' or 'list' (docs/CLUSTER.md, "Clients").
     * @throws PkLockConnectionException (on use) when the TLS handshake fails, saying why
     * @throws ValueError for an empty host or bad node list, a port outside 1..65535, an unknown or bad option,
     *                    a bad pklock.node_order when given a node list
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

    /**
     * The fencing token of the lock this object holds on $key, or null.
     *
     * @throws PkLockLostException when this object's locks were lost with the connection
     */
    public function token(string $key): ?int {}

    /**
     * Whether lockd confirms (`check`) that this object still holds $key with the token it
     * was granted. False, without a round trip, when this object holds no lock on $key.
     *
     * @throws PkLockLostException when this object's locks were lost with the connection
     * @throws PkLockConnectionException when lockd cannot be reached or stops answering
     */
    public function isHeld(string $key): bool {}

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
 * Like any exception, each class can be constructed from PHP (to throw it from a mock), and
 * the ones pklock.so throws carry the file, line and trace of the PHP call that failed.
 *
 * getCode() is one of the constants below: 1..99 the client's own findings, 100 and up the
 * error code lockd answered with (docs/php-exceptions.md). The numbers never change.
 */
class PkLockException extends RuntimeException
{
    /** lockd could not be connected to (refused, unreachable, connect_timeout, TLS handshake; every node of a list) */
    public const CONNECT_FAILED = 1;
    /** the connection broke (closed, reset); this object held no lock through it */
    public const CONNECTION_LOST = 2;
    /** the connection broke, timed out or failed (or lockd says a lock was not held) while this object held locks: they are released */
    public const LOCKS_LOST = 3;
    /** cluster: the lost node's session could not be resumed on another node yet; its locks stay held until its TTL */
    public const NOT_RESUMED = 4;
    /** lockd broke the protocol or sent a result this client cannot decode */
    public const PROTOCOL_ERROR = 5;
    /** the server could not prove it knows the auth_key; the client refused it */
    public const SERVER_NOT_AUTHENTICATED = 6;
    /** synchronized() could not get its locks within the wait */
    public const WAIT_TIMEOUT = 7;
    /** no reply within io_timeout (for a lock, beyond its wait): the client closed the connection; this object held no lock through it */
    public const REPLY_TIMEOUT = 8;
    /** lockd answered with an error code this client does not know (a newer server) */
    public const SERVER_ERROR = 100;
    /** bad_request */
    public const BAD_REQUEST = 101;
    /** unknown_command */
    public const UNKNOWN_COMMAND = 102;
    /** frame_too_large */
    public const FRAME_TOO_LARGE = 103;
    /** auth_required */
    public const AUTH_REQUIRED = 104;
    /** auth_failed */
    public const AUTH_FAILED = 105;
    /** deadlock */
    public const DEADLOCK = 106;
    /** too_many_locks */
    public const TOO_MANY_LOCKS = 107;
    /** too_many_waiters */
    public const TOO_MANY_WAITERS = 108;
    /** too_many_keys */
    public const TOO_MANY_KEYS = 109;
    /** bad_key */
    public const BAD_KEY = 110;
    /** owner_busy */
    public const OWNER_BUSY = 111;
    /** too_many_clients */
    public const TOO_MANY_CLIENTS = 112;
    /** shutting_down */
    public const SHUTTING_DOWN = 113;
    /** memory_limit */
    public const MEMORY_LIMIT = 114;
    /** deadlock_search_limit */
    public const DEADLOCK_SEARCH_LIMIT = 115;
    /** unavailable */
    public const UNAVAILABLE = 116;
    /** session_expired (cluster: the session's locks are gone; a PkLockLostException) */
    public const SESSION_EXPIRED = 117;
    /** not_admin (an admin command such as kick from a client outside --admin-from) */
    public const NOT_ADMIN = 118;
}

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

/**
 * auth_required / auth_failed: the server needs the auth_key option, or refused it; also
 * thrown when a server cannot prove it knows the auth_key (the client refuses it).
 */
class PkLockAuthException extends PkLockServerException {}

/** shutting_down */
class PkLockShuttingDownException extends PkLockServerException {}

/** memory_limit: the server's lock table is at its memory limit (--max-memory). */
class PkLockMemoryLimitException extends PkLockTooManyLocksException {}

/** deadlock_search_limit: the deadlock check for this wait went over its budget; the wait was refused. */
class PkLockDeadlockSearchLimitException extends PkLockServerException {}

/** A cluster node could not reach a quorum of etcd, so it could not decide; another node may. */
class PkLockUnavailableException extends PkLockServerException {}
