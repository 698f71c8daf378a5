<?php

// The chaos checker must be able to fail: fabricated histories with one broken promise
// each (overlaps, tokens, a stuck or starved worker, a lock lost or confirmed against a
// rival, a partial multi-key hold, a token changed by a resume) are reported, and their
// correct twins (among them losses inside a server fault) are not. Times below are in
// milliseconds; the checker gets nanoseconds.

declare(strict_types=1);

namespace PkLock\Tests\Chaos;

use PHPUnit\Framework\TestCase;

final class HistoryCheckerTest extends TestCase
{
    /** A worker that takes `$keys` at `$grant` ms and lets go at `$release` ms (null: never, it was killed). */
    private static function holder(array $keys, int $request, int $grant, ?int $release, int $token, bool $shared = false): array
    {
        $events = [
            ['e' => 'start', 't' => 0],
            ['e' => 'req', 't' => $request * 1_000_000, 'keys' => $keys, 'shared' => $shared, 'wait' => 2.0],
            ['e' => 'grant', 't' => $grant * 1_000_000, 'token' => $token],
        ];
        if ($release !== null) {
            $events[] = ['e' => 'release', 't' => $release * 1_000_000];
            $events[] = ['e' => 'end', 't' => $release * 1_000_000 + 1];
        }
        return $events;
    }

    /** A worker whose lock(`$keys`, wait 2 s) requested at `$request` ms timed out 2 s later. */
    private static function timedOut(array $keys, int $request): array
    {
        return [
            ['e' => 'start', 't' => 0],
            ['e' => 'req', 't' => $request * 1_000_000, 'keys' => $keys, 'shared' => false, 'wait' => 2.0],
            ['e' => 'timeout', 't' => ($request + 2_001) * 1_000_000],
            ['e' => 'end', 't' => ($request + 2_002) * 1_000_000],
        ];
    }

    /** A worker that takes `$keys` at `$grant` ms, has lockd confirm it (isHeld: `$held`
     * per key) between `$asked` and `$answered` ms, and lets go at `$release` ms. */
    private static function committer(array $keys, int $grant, int $asked, int $answered, array $held, int $release, int $token, ?int $tokenAfter = null, bool $resumed = false): array
    {
        return [
            ['e' => 'req', 't' => ($grant - 1) * 1_000_000, 'keys' => $keys, 'shared' => false, 'wait' => 2.0],
            ['e' => 'grant', 't' => $grant * 1_000_000, 'token' => $token],
            ['e' => 'commit', 't' => $answered * 1_000_000, 'asked' => $asked * 1_000_000, 'held' => $held, 'resumed' => $resumed, 'token' => $tokenAfter ?? $token],
            ['e' => 'release', 't' => $release * 1_000_000],
            ['e' => 'end', 't' => $release * 1_000_000 + 1],
        ];
    }

    /** `$events` with a `lost` (PkLockLostException) at `$at` ms inserted before its end. */
    private static function thenLost(array $events, int $at): array
    {
        $end = array_pop($events);
        $events[] = ['e' => 'lost', 't' => $at * 1_000_000, 'during' => 'lock', 'why' => 'session_expired'];
        $events[] = ['e' => 'end', 't' => max($end['t'], $at * 1_000_000 + 1)];
        return $events;
    }

    /**
     * @param array<string, int> $killedAtMs
     * @param list<array{0: int, 1: int}> $faultsMs server fault windows
     */
    private static function check(array $histories, array $killedAtMs = [], array $faultsMs = []): array
    {
        $ns = static fn (int $ms): int => $ms * 1_000_000;
        $faults = array_map(static fn (array $window): array => array_map($ns, $window), $faultsMs);
        return (new HistoryChecker(1.0, 5.0))->check($histories, array_map($ns, $killedAtMs), $faults);
    }

    private static function assertReports(string $needle, array $violations): void
    {
        self::assertNotEmpty($violations, "expected a violation mentioning '{$needle}'");
        self::assertStringContainsString($needle, implode("\n", $violations));
    }

    public function testTakingTurnsIsClean(): void
    {
        self::assertSame([], self::check([
            'a' => self::holder(['k'], 0, 10, 20, 1),
            'b' => self::holder(['k'], 5, 20, 30, 2),
            'c' => self::holder(['k', 'm'], 6, 30, 40, 3),
        ]));
    }

    public function testOverlappingExclusiveHoldsAreReported(): void
    {
        self::assertReports('exclusive overlap on "k"', self::check([
            'a' => self::holder(['k'], 0, 10, 30, 1),
            'b' => self::holder(['k'], 5, 20, 40, 2),
        ]));
    }

    public function testAMultiKeyHoldOverlapsOnEachOfItsKeys(): void
    {
        self::assertReports('exclusive overlap on "m"', self::check([
            'a' => self::holder(['k', 'm'], 0, 10, 30, 1),
            'b' => self::holder(['m'], 5, 20, 40, 2),
        ]));
    }

    public function testAKilledHolderHoldsUntilItsKill(): void
    {
        $histories = ['a' => self::holder(['k'], 0, 10, null, 1), 'b' => self::holder(['k'], 5, 50, 60, 2)];
        self::assertReports('exclusive overlap', self::check($histories, ['a' => 55]));
        self::assertSame([], self::check($histories, ['a' => 45]));
    }

    public function testSharedHoldsMayOverlapEachOtherButNotAnExclusiveOne(): void
    {
        $shared = ['a' => self::holder(['k'], 0, 10, 30, 1, true), 'b' => self::holder(['k'], 0, 20, 40, 2, true)];
        self::assertSame([], self::check($shared));
        self::assertReports('shared/exclusive overlap', self::check($shared + ['c' => self::holder(['k'], 0, 35, 50, 3)]));
    }

    public function testTokensMustFollowTheGrantOrder(): void
    {
        self::assertReports('tokens out of grant order on "k"', self::check([
            'a' => self::holder(['k'], 0, 10, 20, 5),
            'b' => self::holder(['k'], 0, 30, 40, 4),
        ]));
    }

    public function testATokenIsGrantedOnce(): void
    {
        self::assertReports('token 7 granted twice', self::check([
            'a' => self::holder(['k'], 0, 10, 20, 7),
            'b' => self::holder(['other'], 0, 30, 40, 7),
        ]));
    }

    public function testAWorkerThatNeitherFinishedNorWasKilledIsStuck(): void
    {
        $stuck = [['e' => 'start', 't' => 0], ['e' => 'req', 't' => 1_000_000, 'keys' => ['k'], 'shared' => false, 'wait' => 2.0]];
        self::assertReports('never finished (last seen waiting for k)', self::check(['a' => $stuck]));
        self::assertSame([], self::check(['a' => $stuck], ['a' => 3_000]));
    }

    public function testALockThatReturnsLongAfterItsWaitIsStuck(): void
    {
        $late = [
            ['e' => 'req', 't' => 0, 'keys' => ['k'], 'shared' => false, 'wait' => 2.0],
            ['e' => 'timeout', 't' => 9_000_000_000],
            ['e' => 'end', 't' => 9_000_000_001],
        ];
        self::assertReports('returned only after 9.00 s', self::check(['a' => $late]));
    }

    public function testATimeoutOnAFreeKeyIsStarvation(): void
    {
        self::assertReports('timed out after 2.0 s although k were free', self::check(['a' => self::timedOut(['k'], 0)]));
    }

    public function testATimeoutBehindABusyKeyIsFine(): void
    {
        self::assertSame([], self::check([
            'a' => self::timedOut(['k'], 100),
            'b' => self::holder(['k'], 0, 10, 2_500, 1),
        ]));
    }

    public function testATimeoutBehindAMultiKeyWaiterThatWaitsForABusyKeyIsFine(): void
    {
        // c queues for k+m ahead of a; m is busy, so k stays free and a may not barge in.
        $waitingForPair = [
            ['e' => 'req', 't' => 50 * 1_000_000, 'keys' => ['k', 'm'], 'shared' => false, 'wait' => 2.0],
            ['e' => 'timeout', 't' => 2_051 * 1_000_000],
            ['e' => 'end', 't' => 2_052 * 1_000_000],
        ];
        self::assertSame([], self::check([
            'a' => self::timedOut(['k'], 100),
            'b' => self::holder(['m'], 0, 10, 2_500, 1),
            'c' => $waitingForPair,
        ]));
    }

    public function testAnOverlapWithAHolderThatLearnedItsLockWasLostIsNotAViolation(): void
    {
        // a's session expired during a fault: b was granted while a still thought it held
        // the key; a's next call threw PkLockLostException.
        $histories = ['a' => self::thenLost(self::holder(['k'], 0, 10, 300, 1), 400), 'b' => self::holder(['k'], 100, 200, 250, 2)];
        self::assertSame([], self::check($histories, [], [[0, 1_000]]));
        $checker = new HistoryChecker();
        $checker->check($histories, [], [[0, 1_000_000_000]]);
        self::assertSame(1, $checker->stats()['overlaps_lost']);
    }

    public function testALossOutsideEveryServerFaultIsAViolation(): void
    {
        $histories = ['a' => self::thenLost(self::holder(['k'], 0, 10, 300, 1), 400)];
        self::assertReports('lost during lock outside any server fault', self::check($histories));
        self::assertSame([], self::check($histories, [], [[350, 450]]));
    }

    public function testAHoldLockdConfirmedWhileARivalHeldTheKeyIsAViolationEvenIfLostLater(): void
    {
        // b holds k from 100 to 250; lockd answered a's isHeld (asked at 150, logged at 160) yes.
        $confirmedDuringRival = self::thenLost(self::committer(['k'], 10, 150, 160, [true], 300, 1), 400);
        self::assertReports('lockd confirmed a\'s hold of "k"', self::check(['a' => $confirmedDuringRival, 'b' => self::holder(['k'], 90, 100, 250, 2)], [], [[0, 1_000]]));
        // Asked before b's grant arrived: the answer may predate the grant.
        $askedBeforeRival = self::thenLost(self::committer(['k'], 10, 90, 160, [true], 300, 1), 400);
        self::assertSame([], self::check(['a' => $askedBeforeRival, 'b' => self::holder(['k'], 90, 100, 250, 2)], [], [[0, 1_000]]));
        // The rival's hold was a stale grant it learned was lost: confirming a is right.
        $staleRival = self::thenLost(self::holder(['k'], 90, 100, 250, 2), 260);
        self::assertSame([], self::check(['a' => self::committer(['k'], 10, 150, 160, [true], 300, 3), 'b' => $staleRival], [], [[0, 1_000]]));
    }

    public function testIsHeldSayingNoIsALossLearned(): void
    {
        $told = self::committer(['k'], 10, 150, 160, [false], 300, 1);
        $histories = ['a' => $told, 'b' => self::holder(['k'], 90, 100, 250, 2)];
        self::assertSame([], self::check($histories, [], [[0, 1_000]]));
        self::assertReports('lost during commit outside any server fault', self::check($histories));
    }

    public function testAMultiKeyLockHeldOnPartOfItsKeysIsReported(): void
    {
        self::assertReports('holds only part of k+m', self::check(['a' => self::committer(['k', 'm'], 10, 20, 30, [true, false], 40, 1)]));
        self::assertSame([], self::check(['a' => self::committer(['k', 'm'], 10, 20, 30, [true, true], 40, 1)]));
    }

    public function testAResumedSessionMustKeepItsToken(): void
    {
        self::assertReports('was 1 when granted and 7 after its session was resumed', self::check(['a' => self::committer(['k'], 10, 20, 30, [true], 40, 1, 7, true)]));
        self::assertSame([], self::check(['a' => self::committer(['k'], 10, 20, 30, [true], 40, 1, 1, true)]));
    }

    public function testAHolderKilledDuringAFaultMayHaveLostItsLockUnknowing(): void
    {
        // a was killed at 400 ms still holding; its session may have expired before b's grant.
        $histories = ['a' => self::holder(['k'], 0, 10, null, 1), 'b' => self::holder(['k'], 100, 200, 250, 2)];
        self::assertSame([], self::check($histories, ['a' => 400], [[50, 1_000]]));
        self::assertReports('exclusive overlap on "k"', self::check($histories, ['a' => 400]));
    }

    public function testFaultsExcuseLateLocksAndTimeoutsOnFreeKeys(): void
    {
        $late = [
            ['e' => 'req', 't' => 0, 'keys' => ['k'], 'shared' => false, 'wait' => 2.0],
            ['e' => 'fail', 't' => 9_000_000_000, 'during' => 'lock', 'why' => 'PkLockConnectionException: no node'],
            ['e' => 'end', 't' => 9_000_000_001],
        ];
        self::assertSame([], self::check(['a' => $late, 'b' => self::timedOut(['k'], 0)], [], [[1_000, 9_500]]));
        $violations = self::check(['a' => $late, 'b' => self::timedOut(['k'], 0)]);
        self::assertReports('returned only after 9.00 s', $violations);
        self::assertReports('fail during lock outside any server fault', $violations);
        self::assertReports('timed out after 2.0 s although k were free', $violations);
    }

    public function testAStaleGrantToAHolderKilledInAFaultIsLeftOutOfTheTokenOrder(): void
    {
        // a's grant (token 1) reached it after b's (token 2) and a was killed before learning.
        $histories = ['b' => self::holder(['k'], 0, 10, 20, 2), 'a' => self::holder(['k'], 0, 30, null, 1)];
        self::assertSame([], self::check($histories, ['a' => 40], [[0, 1_000]]));
        self::assertReports('tokens out of grant order on "k"', self::check($histories, ['a' => 40]));
    }
}
