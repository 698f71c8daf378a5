<?php

// pcntl_fork() safety in both directions: a child never uses the parent's socket or releases
// the parent's locks (not even through inherited objects), and the parent sees a child's
// locks as another process's, freed when the child exits.

declare(strict_types=1);

namespace PkLock\Tests;

use PkLockClient;

/** @requires extension pcntl */
final class ForkTest extends PkLockTestCase
{
    private const READ_TIMEOUT_SECONDS = 20;

    public function testChildNeitherUsesNorReleasesTheParentsConnectionAndLocks(): void
    {
        $key = $this->key();
        $parent = $this->client();
        $parent->lock($key);
        $token = $parent->token($key);
        [$toParent, $inChild] = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);

        $pid = pcntl_fork();
        if ($pid === 0) {
            fclose($toParent);
            $report = [
                'token' => $parent->token($key),
                'relock' => $parent->lock($key, 0),
                'unlock' => $parent->unlock($key),
            ];
            $parent->unlockAll();
            fwrite($inChild, json_encode($report) . "\n");
            exit(0); // destructors and RSHUTDOWN run in the child
        }
        fclose($inChild);
        $report = json_decode($this->readLine($toParent), true);
        pcntl_waitpid($pid, $status);

        $this->assertSame(
            ['token' => null, 'relock' => false, 'unlock' => false],
            $report,
            'in the child the inherited object holds nothing and its own connection sees the parent as another owner'
        );
        $this->assertSame(0, pcntl_wexitstatus($status));
        $this->assertSame($token, $parent->token($key));
        $this->assertSame(1, $this->holdersOf($key), "the child's exit left the parent's lock held");
        $this->assertSame(['pong' => true], $parent->rpc('ping'), "the parent's connection is intact");
        $this->assertTrue($parent->unlock($key));
        $this->assertTrue($this->client()->lock($key, 0));
    }

    public function testALivingChildDoesNotKeepTheParentsConnectionOpen(): void
    {
        $key = $this->key();
        $parent = $this->client();
        $this->assertTrue($parent->lock($key));
        [$toParent, $inChild] = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);

        $pid = pcntl_fork();
        if ($pid === 0) {
            // Lives on without touching pklock until the parent is done, then leaves
            // without running PHP's shutdown.
            fclose($toParent);
            fgets($inChild);
            posix_kill(posix_getpid(), SIGKILL);
        }
        fclose($inChild);
        try {
            // Closing ends the connection for lockd even though the child still has a
            // copy of the descriptor from fork(): the server releases the lock.
            $parent->close();
            $this->waitUntil(fn () => $this->holdersOf($key) === 0, 'the parent\'s lock released while its child lives');
            $this->assertTrue($this->client()->lock($key, 0));
        } finally {
            fwrite($toParent, "done\n");
            pcntl_waitpid($pid, $status);
        }
    }

    public function testParentSeesAChildsLocksAsAnotherProcessesUntilTheChildExits(): void
    {
        $key = $this->key();
        $parent = $this->client();
        $parent->rpc('ping'); // connected before the fork: the child inherits the socket
        [$toParent, $inChild] = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);

        $pid = pcntl_fork();
        if ($pid === 0) {
            fclose($toParent);
            $own = new PkLockClient(self::$server->host(), self::$server->port());
            $own->lock($key);
            fwrite($inChild, "locked\n");
            fgets($inChild); // until the parent has looked
            exit(0);
        }
        fclose($inChild);
        $this->assertSame('locked', $this->readLine($toParent));

        $this->assertFalse($parent->lock($key, 0));
        fwrite($toParent, "done\n");

        $this->assertTrue($parent->lock($key, 30), "the child's exit closed its connection and freed the lock");
        pcntl_waitpid($pid, $status);
        $this->assertSame(0, pcntl_wexitstatus($status));
    }

    /** @param resource $socket */
    private function readLine($socket): string
    {
        $read = [$socket];
        $write = $except = null;
        if (stream_select($read, $write, $except, self::READ_TIMEOUT_SECONDS) !== 1) {
            $this->fail('the child did not report back');
        }
        return rtrim((string) fgets($socket), "\n");
    }
}
