<?php

// PHPUnit bootstrap: Composer is not available on the test machines, so register the PSR-4
// autoloading composer.json declares (PkLock\ => src/) plus the test helpers
// (PkLock\Tests\ => php-tests/), load the bridged libraries, and check that pklock.so is
// loaded.

declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    $roots = ['PkLock\\Tests\\' => __DIR__ . '/', 'PkLock\\' => dirname(__DIR__) . '/src/'];
    foreach ($roots as $prefix => $dir) {
        if (strncmp($class, $prefix, strlen($prefix)) === 0) {
            $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }
            return;
        }
    }
});

// The libraries the bridges are tested against, from Debian's php-symfony-lock and
// php-malkusch-lock (their own autoloaders, as Composer is not there).
foreach (['/usr/share/php/Symfony/Component/Lock/autoload.php', '/usr/share/php/Malkusch/Lock/autoload.php'] as $autoload) {
    require_once $autoload;
}

if (!extension_loaded('pklock')) {
    fwrite(STDERR, "pklock.so is not loaded: run with php -d extension=/path/to/pklock.so (make test-php does)\n");
    exit(1);
}
