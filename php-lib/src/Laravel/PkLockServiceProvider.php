<?php

// Registers the `pklock` cache driver with Laravel (auto-discovered from composer.json's
// extra.laravel.providers), configured by a store entry of config/cache.php:
// ['driver' => 'pklock', 'host' => ..., 'port' => ..., 'options' => [...], 'values_store' => 'redis'].

declare(strict_types=1);

namespace PkLock\Laravel;

use Illuminate\Support\ServiceProvider;

final class PkLockServiceProvider extends ServiceProvider
{
    public function boot(): void
    {
        // Not a static closure: CacheManager::extend() binds it to the manager.
        $this->app->make('cache')->extend('pklock', function ($app, array $config) {
            $cache = $app->make('cache');
            $values = isset($config['values_store']) ? $cache->store($config['values_store'])->getStore() : null;

            return $cache->repository(new PkLockStore(
                // Unset or empty (an unset env()): the pklock.* INI settings decide.
                ($config['host'] ?? '') !== '' ? (string) $config['host'] : null,
                ($config['port'] ?? '') !== '' ? (int) $config['port'] : null,
                $config['options'] ?? [],
                $values,
            ));
        });
    }
}
