<?php

// PHPUnit bootstrap: Composer is not available on the test machines, so load the library
// through its own autoloader (php-lib/autoload.php, the PSR-4 mapping php-lib/composer.json
// declares), map the test helpers (PkLock\Tests\ => php-tests/) and the Dlock interface
// fixture (Dlock\ => php-tests/fixtures/Dlock/), load the bridged libraries, and check that
// pklock.so is loaded.

declare(strict_types=1);

require_once dirname(__DIR__) . '/php-lib/autoload.php';

spl_autoload_register(static function (string $class): void {
    $roots = ['PkLock\\Tests\\' => __DIR__ . '/', 'Dlock\\' => __DIR__ . '/fixtures/Dlock/'];
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

// Laravel's cache, container and config from Debian's php-laravel-framework, when installed:
// php-tests/Laravel skips (saying why) without them.
foreach (['Cache', 'Container', 'Config'] as $component) {
    if (is_file("/usr/share/php/Illuminate/{$component}/autoload.php")) {
        require_once "/usr/share/php/Illuminate/{$component}/autoload.php";
    }
}

if (!extension_loaded('pklock')) {
    fwrite(STDERR, "pklock.so is not loaded: run with php -d extension=/path/to/pklock.so (make test-php does)\n");
    exit(1);
}
