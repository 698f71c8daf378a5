#!/usr/bin/env php
<?php

// pkLockServer's demo client, on pklock.so: takes the lock `test`, says so, holds it, releases
// it, lingers, exits. Several copies started together take turns in FIFO order (bin/demo does
// that). Needs pklock.so loaded: php -d extension=modules/pklock.so bin/testClient.php

declare(strict_types=1);

const USAGE = <<<'TXT'
    Usage: php -d extension=modules/pklock.so bin/testClient.php [options]

    Takes the lock "test" on lockd, holds it, releases it, lingers, exits.

    Options:
      --host=HOST       lockd host (default: the pklock.default_host INI setting, 127.0.0.1)
      --port=PORT       lockd port (default: the pklock.default_port INI setting, 11300)
      --hold=SECONDS    how long to hold the lock (default 10)
      --linger=SECONDS  how long to stay connected after releasing (default 10)
      --key=KEY         the lock to take (default "test")
      --name=NAME       how this client calls itself in its output (default: its pid)
      --help            this text

    TXT;

/** Prints one timestamped line. */
function say(string $name, string $message): void
{
    $now = DateTimeImmutable::createFromFormat('U.u', sprintf('%.6F', microtime(true)));
    printf("%s %s: %s\n", $now->format('H:i:s.v'), $name, $message);
}

/** A non-negative number of seconds from the command line, or exit with usage. */
function seconds(array $options, string $name, float $default): float
{
    if (!isset($options[$name])) {
        return $default;
    }
    if (!is_numeric($options[$name]) || (float) $options[$name] < 0) {
        fwrite(STDERR, "--{$name} must be a number of seconds >= 0\n\n" . USAGE);
        exit(2);
    }
    return (float) $options[$name];
}

$options = getopt('', ['host:', 'port:', 'hold:', 'linger:', 'key:', 'name:', 'help']);
if (isset($options['help'])) {
    echo USAGE;
    exit(0);
}
if (!extension_loaded('pklock')) {
    fwrite(STDERR, "pklock.so is not loaded: run php -d extension=/path/to/pklock.so {$argv[0]} (or make install)\n");
    exit(1);
}
$hold = seconds($options, 'hold', 10.0);
$linger = seconds($options, 'linger', 10.0);
$key = (string) ($options['key'] ?? 'test');
$name = (string) ($options['name'] ?? 'pid ' . getmypid());

try {
    $client = new PkLockClient($options['host'] ?? null, isset($options['port']) ? (int) $options['port'] : null);
    say($name, "waiting for lock '{$key}'");
    $client->lock($key, null);
    say($name, sprintf("got lock '%s' (fencing token %d), holding it for %s s", $key, $client->token($key), $hold));
    usleep((int) ($hold * 1e6));
    $client->unlock($key);
    say($name, "released lock '{$key}', lingering for {$linger} s");
    usleep((int) ($linger * 1e6));
    say($name, 'exiting');
} catch (PkLockException $e) {
    say($name, get_class($e) . ': ' . $e->getMessage());
    exit(1);
}
