<?php

// A throwaway php-fpm master for FpmTest: its own config, php.ini and unix socket in a temp
// dir, so it loads the pklock.so under test and nothing installed (no php.ini of the system,
// no conf.d scan), and requests sent to it with cgi-fcgi (libfcgi-bin).

declare(strict_types=1);

namespace PkLock\Tests;

use RuntimeException;

final class PhpFpm
{
    private const START_TIMEOUT_SECONDS = 15.0;
    private const STOP_TIMEOUT_SECONDS = 10.0;
    private const REQUEST_TIMEOUT_SECONDS = 20;

    /** @var resource */
    private $master;

    private function __construct(private string $dir)
    {
    }

    /** Why php-fpm cannot run here, or null when it can. */
    public static function unavailableReason(): ?string
    {
        if (self::binary() === null) {
            return sprintf('no php-fpm%d.%d to run (apt-get install php-fpm)', PHP_MAJOR_VERSION, PHP_MINOR_VERSION);
        }
        if (trim((string) shell_exec('command -v cgi-fcgi')) === '') {
            return 'no cgi-fcgi to talk FastCGI with (apt-get install libfcgi-bin)';
        }
        return null;
    }

    /**
     * Starts a master with one pool, `pm = static`, of `$workers` workers.
     *
     * @param string $phpIni the php.ini every process reads (and nothing else)
     * @param list<string> $poolLines more lines for the pool, e.g. php_admin_value[...] = ...
     */
    public static function start(string $phpIni, array $poolLines, int $workers): self
    {
        $dir = sys_get_temp_dir() . '/pklock-fpm-' . bin2hex(random_bytes(6));
        mkdir($dir, 0700);
        $fpm = new self($dir);
        $asRoot = posix_geteuid() === 0;
        $config = array_merge(
            ['[global]', "error_log = {$dir}/fpm.log", 'daemonize = no', '', '[pklock]'],
            // A master started by root must name the workers' user; these stay root too.
            $asRoot ? ['user = root', 'group = root'] : [],
            ["listen = {$fpm->socket()}", 'pm = static', "pm.max_children = {$workers}", 'catch_workers_output = yes'],
            $poolLines
        );
        file_put_contents("{$dir}/php-fpm.conf", implode("\n", $config) . "\n");
        file_put_contents("{$dir}/php.ini", $phpIni);

        $command = array_merge(
            [self::binary(), '--nodaemonize', '--fpm-config', "{$dir}/php-fpm.conf", '-c', "{$dir}/php.ini"],
            $asRoot ? ['--allow-to-run-as-root'] : []
        );
        $descriptors = [0 => ['file', '/dev/null', 'r'], 1 => ['file', "{$dir}/master.out", 'w'], 2 => ['file', "{$dir}/master.out", 'a']];
        // An empty PHP_INI_SCAN_DIR: no conf.d, so no installed pklock.so is loaded as well.
        $master = proc_open($command, $descriptors, $pipes, $dir, ['PHP_INI_SCAN_DIR' => ''] + getenv());
        if ($master === false) {
            throw new RuntimeException('cannot start php-fpm');
        }
        $fpm->master = $master;

        $deadline = microtime(true) + self::START_TIMEOUT_SECONDS;
        while (!file_exists($fpm->socket())) {
            if (!proc_get_status($master)['running'] || microtime(true) > $deadline) {
                $log = $fpm->log();
                $fpm->stop();
                throw new RuntimeException("php-fpm did not start:\n{$log}");
            }
            usleep(20_000);
        }
        return $fpm;
    }

    /**
     * Runs `$script` in a worker (GET with `$query`) and returns the response body.
     *
     * @param array<string, string> $query
     */
    public function request(string $script, array $query): string
    {
        $env = [
            'SCRIPT_FILENAME' => $script,
            'REQUEST_METHOD' => 'GET',
            'QUERY_STRING' => http_build_query($query),
            'PATH' => (string) getenv('PATH'),
        ];
        $command = ['timeout', (string) self::REQUEST_TIMEOUT_SECONDS, 'cgi-fcgi', '-bind', '-connect', $this->socket()];
        $process = proc_open($command, [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $env);
        $response = stream_get_contents($pipes[1]);
        $errors = stream_get_contents($pipes[2]);
        $status = proc_close($process);
        if ($status !== 0 || !str_contains($response, "\r\n\r\n")) {
            throw new RuntimeException("cgi-fcgi failed ({$status}): {$errors}\n{$response}\n{$this->log()}");
        }
        return explode("\r\n\r\n", $response, 2)[1];
    }

    /** What the master and its workers logged. */
    public function log(): string
    {
        return implode("\n", array_map(
            fn (string $file): string => is_file($file) ? (string) file_get_contents($file) : '',
            ["{$this->dir}/master.out", "{$this->dir}/fpm.log"]
        ));
    }

    /** Stops the master (SIGTERM: it stops its workers; SIGKILL if it does not end in time). */
    public function stop(): void
    {
        if (isset($this->master)) {
            proc_terminate($this->master, SIGTERM);
            $deadline = microtime(true) + self::STOP_TIMEOUT_SECONDS;
            while (proc_get_status($this->master)['running'] && microtime(true) < $deadline) {
                usleep(20_000);
            }
            if (proc_get_status($this->master)['running']) {
                proc_terminate($this->master, SIGKILL);
            }
            proc_close($this->master);
            unset($this->master);
        }
        array_map('unlink', glob("{$this->dir}/*") ?: []);
        @rmdir($this->dir);
    }

    private function socket(): string
    {
        return "{$this->dir}/php-fpm.sock";
    }

    private static function binary(): ?string
    {
        $name = sprintf('php-fpm%d.%d', PHP_MAJOR_VERSION, PHP_MINOR_VERSION);
        foreach (["/usr/sbin/{$name}", trim((string) shell_exec('command -v ' . escapeshellarg($name)))] as $candidate) {
            if ($candidate !== '' && is_executable($candidate)) {
                return $candidate;
            }
        }
        return null;
    }
}
