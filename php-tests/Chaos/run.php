<?php

// `make chaos` and `make chaos-cluster`: the chaos test for as long as asked, outside
// PHPUnit. Prints what it saw and every violation; exits 1 if there was one (the logs are
// then kept for reading).
//
//   php -d extension=/abs/modules/pklock.so php-tests/Chaos/run.php [SECONDS [WORKERS [single|cluster]]]
//
// `cluster` runs against one etcd member and three lockd nodes, killing and freezing nodes
// and killing etcd as well. Needs LOCKD_BIN (or lockd on PATH), and etcd for `cluster`;
// the workers load the same pklock.so (PKLOCK_EXT, or the one this process loaded).

declare(strict_types=1);

require __DIR__ . '/../bootstrap.php';

use PkLock\Tests\Chaos\ChaosRun;
use PkLock\Tests\Chaos\HistoryChecker;
use PkLock\Tests\Chaos\LockdCluster;
use PkLock\Tests\Chaos\SingleLockd;

$seconds = (float) ($argv[1] ?? 600);
$workers = (int) ($argv[2] ?? 16);
$cluster = ($argv[3] ?? 'single') === 'cluster';
fprintf(STDERR, "chaos: %d workers, %.0f s, SIGKILLs every ~0.25 s%s\n", $workers, $seconds, $cluster ? '; 3 lockd nodes on 1 etcd, node and etcd faults' : '');
$run = new ChaosRun($cluster ? new LockdCluster(killEtcd: true) : new SingleLockd(), $workers, $seconds);
$result = $run->run(new HistoryChecker());
foreach ($result['stats'] as $name => $value) {
    printf("%-22s %s\n", $name, $value);
}
if ($result['violations'] === []) {
    echo "no violations\n";
    $run->cleanUp();
    exit(0);
}
echo "VIOLATIONS:\n  " . implode("\n  ", $result['violations']) . "\nlogs kept in {$result['dir']}\n";
exit(1);
