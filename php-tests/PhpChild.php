<?php

// A child PHP process for the multi-process tests: runs a snippet with the same pklock.so as
// the test process, lets the test read its output line by line (bounded waits) and kill it.

declare(strict_types=1);

namespace PkLock\Tests;

use RuntimeException;

final class PhpChild
{
    private const DEFAULT_TIMEOUT_SECONDS = 20.0;

    /** @var resource */
    private $process;
    /** @var resource */
    private $stdout;
    private string $buffer = '';
    private string $stderrFile;

    /**
     * @param list<string> $arguments what follows PHP's options: `-r CODE` or `SCRIPT ARGS...`
     * @param array<string, string> $ini extra php.ini settings
     */
    private function __construct(array $arguments, array $ini)
    {
        $this->stderrFile = tempnam(sys_get_temp_dir(), 'pklock-child-');
        $command = [PHP_BINARY, '-d', 'extension=' . self::extensionPath(), '-d', 'display_errors=stderr'];
        foreach ($ini as $name => $value) {
            array_push($command, '-d', "{$name}={$value}");
        }
        $command = array_merge($command, $arguments);
        $descriptors = [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['file', $this->stderrFile, 'w']];
        $process = proc_open($command, $descriptors, $pipes);
        if ($process === false) {
            throw new RuntimeException('cannot start a child PHP');
        }
        $this->process = $process;
        $this->stdout = $pipes[1];
    }

    /**
     * Runs `$code` (PHP without `<?php`) in a new PHP process.
     *
     * @param array<string, string> $ini extra php.ini settings, e.g. ['pklock.auth_key' => 'k']
     */
    public static function start(string $code, array $ini = []): self
    {
        return new self(['-r', $code], $ini);
    }

    /** Runs the PHP file `$script` with `$args` in a new PHP process. */
    public static function script(string $script, string ...$args): self
    {
        return new self(array_merge([$script], $args), []);
    }

    /**
     * The pklock.so this process runs, for children: PKLOCK_EXT if set, else the file this
     * process mapped (the Makefile loads it with -d extension=, which ini_get cannot tell).
     */
    public static function extensionPath(): string
    {
        $fromEnv = getenv('PKLOCK_EXT');
        if ($fromEnv !== false && $fromEnv !== '') {
            return $fromEnv;
        }
        foreach (file('/proc/self/maps', FILE_IGNORE_NEW_LINES) ?: [] as $line) {
            if (preg_match('~\s(/\S*pklock\S*\.so)$~', $line, $match)) {
                return $match[1];
            }
        }
        throw new RuntimeException('cannot tell where pklock.so is: set PKLOCK_EXT');
    }

    /** The next line the child prints (without the newline); fails after a bounded wait. */
    public function readLine(float $timeout = self::DEFAULT_TIMEOUT_SECONDS): string
    {
        $deadline = microtime(true) + $timeout;
        while (($newline = strpos($this->buffer, "\n")) === false) {
            $left = $deadline - microtime(true);
            if ($left <= 0) {
                throw new RuntimeException("child printed no line within {$timeout} s; stderr:\n" . $this->stderr());
            }
            $read = [$this->stdout];
            $write = $except = null;
            if (stream_select($read, $write, $except, (int) $left, (int) (fmod($left, 1.0) * 1e6)) > 0) {
                $chunk = fread($this->stdout, 8192);
                if ($chunk === '' || $chunk === false) {
                    throw new RuntimeException("child exited without printing a line; stderr:\n" . $this->stderr());
                }
                $this->buffer .= $chunk;
            }
        }
        $line = substr($this->buffer, 0, $newline);
        $this->buffer = substr($this->buffer, $newline + 1);
        return $line;
    }

    /** Waits (bounded) for the child to exit and returns its exit code. */
    public function wait(float $timeout = self::DEFAULT_TIMEOUT_SECONDS): int
    {
        $deadline = microtime(true) + $timeout;
        do {
            $status = proc_get_status($this->process);
            if (!$status['running']) {
                return $status['exitcode'];
            }
            usleep(10_000);
        } while (microtime(true) < $deadline);
        throw new RuntimeException("child still running after {$timeout} s; stderr:\n" . $this->stderr());
    }

    /** SIGKILL: the child dies without running any PHP or extension shutdown code. */
    public function kill(): void
    {
        proc_terminate($this->process, 9);
        $this->wait();
    }

    public function stderr(): string
    {
        return (string) file_get_contents($this->stderrFile);
    }

    public function __destruct()
    {
        if (proc_get_status($this->process)['running']) {
            proc_terminate($this->process, 9);
        }
        proc_close($this->process);
        @unlink($this->stderrFile);
    }
}
