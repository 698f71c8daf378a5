<?php

// What TLS costs per round trip, as a ratio: the same PkLockClient calls against a plain lockd
// and against a TLS one (a CA and certificate made here with the openssl CLI), in interleaved
// rounds of the same run, so machine noise hits both alike. docs/TLS.md quotes its numbers.
//
// Usage: php -d extension=modules/pklock.so bench/php/tls-vs-plain.php [iterations]
// Starts target/release/lockd (or LOCKD_BIN) twice on free ports; needs openssl.

declare(strict_types=1);

require_once dirname(__DIR__, 2) . '/php-lib/src/Testing/LockdServer.php';

use PkLock\Testing\LockdServer;

const ROUNDS = 5;

$iterations = (int) ($argv[1] ?? 20000);
if ($iterations < 1) {
    fwrite(STDERR, "usage: {$argv[0]} [iterations]\n");
    exit(2);
}
if (getenv('LOCKD_BIN') === false && is_file(dirname(__DIR__, 2) . '/target/release/lockd')) {
    putenv('LOCKD_BIN=' . dirname(__DIR__, 2) . '/target/release/lockd');
}

$dir = sys_get_temp_dir() . '/pklock-tls-bench-' . getmypid();
@mkdir($dir);
$openssl = function (string $args) use ($dir): void {
    exec("cd {$dir} && openssl {$args} 2>&1", $output, $status);
    if ($status !== 0) {
        fwrite(STDERR, "openssl {$args} failed:\n" . implode("\n", $output) . "\n");
        exit(1);
    }
};
$ec = '-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';
$openssl("req -x509 {$ec} -days 1 -keyout ca.key -out ca.crt -subj /CN=bench-ca");
$openssl("req {$ec} -keyout server.key -out server.csr -subj /CN=bench");
file_put_contents("{$dir}/server.ext", "subjectAltName = IP:127.0.0.1\n");
$openssl('x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile server.ext -out server.crt');

$plainServer = LockdServer::start();
$tlsServer = LockdServer::start(['--tls-cert', "{$dir}/server.crt", '--tls-key', "{$dir}/server.key"]);
$clients = [
    'plain' => new PkLockClient($plainServer->host(), $plainServer->port()),
    'tls' => new PkLockClient($tlsServer->host(), $tlsServer->port(), ['tls' => true, 'tls_ca' => "{$dir}/ca.crt"]),
];

/** Microseconds per call of $operation, over $iterations calls. */
function microsPerCall(int $iterations, callable $operation): float
{
    $start = hrtime(true);
    for ($i = 0; $i < $iterations; $i++) {
        $operation();
    }
    return (hrtime(true) - $start) / 1e3 / $iterations;
}

$operations = [
    'ping' => fn (PkLockClient $c) => $c->rpc('ping'),
    'lock+unlock' => function (PkLockClient $c): void {
        $c->lock('bench-tls', 5.0);
        $c->unlock('bench-tls');
    },
];
$times = [];
foreach ($operations as $name => $operation) {
    foreach ($clients as $transport => $client) {
        microsPerCall(1000, fn () => $operation($client)); // warm up: connect, handshake, caches
    }
    for ($round = 1; $round <= ROUNDS; $round++) {
        foreach ($clients as $transport => $client) {
            $times[$name][$transport][] = microsPerCall($iterations, fn () => $operation($client));
        }
    }
}
foreach ($times as $name => $byTransport) {
    $median = function (array $values): float {
        sort($values);
        return $values[intdiv(count($values), 2)];
    };
    [$plain, $tls] = [$median($byTransport['plain']), $median($byTransport['tls'])];
    printf("%-12s plain %6.1f us, TLS %6.1f us per call (medians of %d rounds of %d): +%.1f us, ratio %.2f\n",
        $name, $plain, $tls, ROUNDS, $iterations, $tls - $plain, $tls / $plain);
}

$plainServer->stop();
$tlsServer->stop();
array_map('unlink', glob("{$dir}/*"));
rmdir($dir);
