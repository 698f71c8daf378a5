<?php

// The PHP library is a Composer package of its own (php-lib/composer.json): Composer accepts
// its metadata, and an application that requires it through a path repository (the recipe in
// docs/php-library.md) gets the PkLock\ classes from vendor/autoload.php. Needs the `composer`
// command (Debian's composer package); skipped, saying so, without it. Uses no network.

declare(strict_types=1);

namespace PkLock\Tests;

use PHPUnit\Framework\TestCase;

final class ComposerPackageTest extends TestCase
{
    private const LIBRARY_DIR = __DIR__ . '/../php-lib';

    private string $composer;
    private string $appDir;

    protected function setUp(): void
    {
        $composer = trim((string) shell_exec('command -v composer'));
        if ($composer === '') {
            $this->markTestSkipped('composer is not installed (apt-get install composer)');
        }
        $this->composer = $composer;
        $this->appDir = sys_get_temp_dir() . '/pklock-composer-app-' . getmypid();
        mkdir($this->appDir);
    }

    protected function tearDown(): void
    {
        if (isset($this->appDir) && is_dir($this->appDir)) {
            exec('rm -rf ' . escapeshellarg($this->appDir));
        }
    }

    public function testComposerAcceptsTheLibrarysMetadata(): void
    {
        [$status, $output] = $this->composer(['validate', '--strict', '--no-check-publish', realpath(self::LIBRARY_DIR) . '/composer.json']);

        $this->assertSame(0, $status, $output);
        $this->assertSame('pklock/pklock-php', json_decode((string) file_get_contents(self::LIBRARY_DIR . '/composer.json'), true)['name']);
    }

    public function testAnApplicationRequiringItThroughAPathRepositoryAutoloadsTheClasses(): void
    {
        $application = [
            'repositories' => [
                ['type' => 'path', 'url' => realpath(self::LIBRARY_DIR), 'options' => ['symlink' => false]],
                ['packagist.org' => false],
            ],
            'require' => ['pklock/pklock-php' => '*@dev'],
        ];
        file_put_contents($this->appDir . '/composer.json', json_encode($application, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES));

        [$status, $output] = $this->composer(['install', '--no-interaction', '--no-progress']);
        $this->assertSame(0, $status, $output);

        // A fresh PHP, without this suite's autoloaders: only Composer's may find the classes.
        $probe = 'require "vendor/autoload.php"; echo json_encode(array_map("class_exists", ['
            . '"PkLock\\\\Testing\\\\LockdServer", "PkLock\\\\Testing\\\\EtcdServer"]));';
        $loaded = shell_exec('cd ' . escapeshellarg($this->appDir) . ' && ' . escapeshellarg(PHP_BINARY) . ' -n -r ' . escapeshellarg($probe));
        $this->assertSame('[true,true]', $loaded);
    }

    /**
     * Runs composer in the application directory, with a throwaway home (no user config, no cache).
     *
     * @param list<string> $arguments
     * @return array{int, string} exit status and everything it printed
     */
    private function composer(array $arguments): array
    {
        $environment = [
            'COMPOSER_HOME' => $this->appDir . '/.composer-home',
            'COMPOSER_NO_INTERACTION' => '1',
            'COMPOSER_ALLOW_SUPERUSER' => '1',
        ] + getenv();
        $process = proc_open(
            array_merge([$this->composer], $arguments),
            [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['redirect', 1]],
            $pipes,
            $this->appDir,
            $environment
        );
        $output = stream_get_contents($pipes[1]);
        fclose($pipes[1]);

        return [proc_close($process), (string) $output];
    }
}
