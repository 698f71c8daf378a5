<?php

// Keeps php-ext/pklock.stub.php honest: the classes, parents, constants, methods and parameter
// lists it declares are those of the loaded extension (compared through Reflection, the stub
// being loaded in a PHP process without the extension).

declare(strict_types=1);

namespace PkLock\Tests;

use PHPUnit\Framework\TestCase;
use ReflectionClass;

final class StubTest extends TestCase
{
    private const STUB = __DIR__ . '/../php-ext/pklock.stub.php';

    public function testStubDeclaresWhatTheExtensionDefines(): void
    {
        $describe = self::describer();
        $classes = (new \ReflectionExtension('pklock'))->getClassNames();
        $real = $describe($classes);

        $command = [PHP_BINARY, '-n', '-r', sprintf(
            'require %s; $describe = %s; echo json_encode($describe(%s));',
            var_export(realpath(self::STUB), true),
            self::DESCRIBER_SOURCE,
            var_export($classes, true)
        )];
        $process = proc_open($command, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        $output = stream_get_contents($pipes[1]);
        $errors = stream_get_contents($pipes[2]);
        proc_close($process);

        $this->assertSame($real, json_decode($output, true), "stub differs from the extension\n{$errors}");
    }

    private const DESCRIBER_SOURCE = <<<'PHP'
        function (array $classes): array {
            $described = [];
            foreach ($classes as $class) {
                $reflection = new ReflectionClass($class);
                $methods = [];
                foreach ($reflection->getMethods() as $method) {
                    if ($method->getDeclaringClass()->getName() !== $class) {
                        continue;
                    }
                    $methods[$method->getName()] = [
                        'return' => (string) $method->getReturnType(),
                        'parameters' => array_map(
                            fn (ReflectionParameter $p): string => trim(sprintf(
                                '%s $%s%s',
                                $p->getType(),
                                $p->getName(),
                                $p->isOptional() ? ' = ' . var_export($p->getDefaultValue(), true) : ''
                            )),
                            $method->getParameters()
                        ),
                    ];
                }
                ksort($methods);
                $constants = [];
                foreach ($reflection->getReflectionConstants() as $constant) {
                    if ($constant->getDeclaringClass()->getName() === $class) {
                        $constants[$constant->getName()] = $constant->getValue();
                    }
                }
                ksort($constants);
                $described[$class] = ['parent' => get_parent_class($class), 'constants' => $constants, 'methods' => $methods];
            }
            return $described;
        }
        PHP;

    private static function describer(): callable
    {
        return eval('return ' . self::DESCRIBER_SOURCE . ';');
    }
}
