<?php

// Autoloader of the pklock PHP library for applications without Composer (Composer users get
// the same PSR-4 mapping from composer.json): `require '/path/to/php-lib/autoload.php';`
// makes the PkLock\ classes loadable. The libraries the adapters plug into (symfony/lock,
// malkusch/lock, Laravel, Dlock) need their own autoloaders.

declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    $prefix = 'PkLock\\';
    if (strncmp($class, $prefix, strlen($prefix)) !== 0) {
        return;
    }
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
