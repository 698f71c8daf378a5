//! Latencies of single events, one at a time on an otherwise idle server:
//! - ping: one request's round trip just before each handoff, the yardstick for it;
//! - handoff: the holder sends its release → the next waiter has its grant;
//! - death: the holder's connection is closed (its process died) → the waiter has it.
//!
//! lockd's waiter is queued on the server, so one thread times both sides: it sends the
//! release (or closes the holder) and then reads the waiter's socket, which holds the
//! grant as soon as lockd sent it. A Redis waiter has no queue to sit in: it polls with
//! `SET NX` from its own thread, and death waits for the dead holder's TTL.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::client::{LockdConn, Locker, RedisConn, Server};
use crate::report::Samples;

pub struct Options {
    pub samples: usize,
    /// Death samples on Redis, each of which lasts a whole TTL.
    pub redis_death_samples: usize,
    pub redis_ttl: Duration,
    pub retry_delay: Duration,
}

pub fn run(server: Server, opts: &Options) -> Result<()> {
    let name = server.name();
    // Pings are timed in the same loop as the handoffs, alternating, so both see the
    // same scheduling luck (on a VM an idle CPU takes tens of µs to wake).
    let mut ping = Samples::default();
    let (mut handoff, mut death) = match server {
        Server::Lockd(addr) => {
            let mut control = LockdConn::connect(addr)?;
            (lockd_handoff(addr, &mut control, opts.samples, &mut ping)?, lockd_death(addr, &mut control, opts.samples)?)
        }
        // Redis cannot tell a dead holder from a slow one: its lock lives out the TTL.
        Server::Redis(addr) => (redis_handoff(addr, opts, &mut ping)?, redis_death(addr, opts)?),
    };
    ping.emit_quantiles(name, "ping", "one request, timed just before each handoff");
    handoff.emit_quantiles(name, "handoff", "release → next waiter granted");
    death.emit_quantiles(name, "death", "holder's connection closed");
    Ok(())
}

/// Times one ping round trip.
fn time_ping(conn: &mut dyn Locker, ping: &mut Samples) -> Result<()> {
    let began = Instant::now();
    conn.ping()?;
    ping.push(began.elapsed());
    Ok(())
}

/// Waits until lockd counts `n` waiting requests, so a timed release always has a waiter.
fn await_waiters(control: &mut LockdConn, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while control.stat()?.waiters < n {
        if Instant::now() > deadline {
            bail!("lockd never showed {n} waiting request(s)");
        }
        std::thread::yield_now();
    }
    Ok(())
}

fn lockd_handoff(addr: std::net::SocketAddr, control: &mut LockdConn, samples: usize, ping: &mut Samples) -> Result<Samples> {
    let mut out = Samples::default();
    let (mut holder, mut waiter) = (LockdConn::connect(addr)?, LockdConn::connect(addr)?);
    let key = "bench:handoff";
    holder.lock(key)?;
    for _ in 0..samples {
        waiter.send_lock(key)?;
        await_waiters(control, 1)?;
        time_ping(&mut holder, ping)?;
        let began = Instant::now();
        holder.send_unlock(key, false)?;
        waiter.recv_grant()?;
        out.push(began.elapsed());
        holder.recv_unlocked()?;
        // The waiter now holds it; swap roles for the next sample.
        std::mem::swap(&mut holder, &mut waiter);
    }
    holder.unlock(key)?;
    Ok(out)
}

fn lockd_death(addr: std::net::SocketAddr, control: &mut LockdConn, samples: usize) -> Result<Samples> {
    let mut out = Samples::default();
    let key = "bench:death";
    for _ in 0..samples {
        let mut doomed = LockdConn::connect(addr)?;
        doomed.lock(key)?;
        let mut waiter = LockdConn::connect(addr)?;
        waiter.send_lock(key)?;
        await_waiters(control, 1)?;
        let began = Instant::now();
        drop(doomed);
        waiter.recv_grant()?;
        out.push(began.elapsed());
        waiter.unlock(key)?;
    }
    Ok(out)
}

/// A waiter thread polls `SET NX`; the holder releases once the waiter has failed at
/// least once. Timed from just before the release is sent to the waiter's success.
fn redis_handoff(addr: std::net::SocketAddr, opts: &Options, ping: &mut Samples) -> Result<Samples> {
    let key = "bench:handoff";
    let mut holder = RedisConn::connect(addr, opts.redis_ttl, opts.retry_delay)?;
    let mut waiter = RedisConn::connect(addr, opts.redis_ttl, opts.retry_delay)?;
    let (polling_tx, polling_rx) = mpsc::channel::<()>();
    let (got_tx, got_rx) = mpsc::channel::<Instant>();
    let (next_tx, next_rx) = mpsc::channel::<()>();
    let samples = opts.samples;
    let retry_delay = opts.retry_delay;
    let waiting = std::thread::spawn(move || -> Result<()> {
        for _ in 0..samples {
            next_rx.recv()?;
            let mut told = false;
            while !waiter.try_lock(key)? {
                if !told {
                    polling_tx.send(())?;
                    told = true;
                }
                if !retry_delay.is_zero() {
                    std::thread::sleep(retry_delay);
                }
            }
            got_tx.send(Instant::now())?;
            waiter.unlock(key)?;
        }
        Ok(())
    });
    let mut out = Samples::default();
    for _ in 0..samples {
        holder.lock(key)?;
        next_tx.send(())?;
        polling_rx.recv()?;
        time_ping(&mut holder, ping)?;
        let began = Instant::now();
        holder.unlock(key)?;
        out.push(got_rx.recv()? - began);
    }
    drop(next_tx);
    waiting.join().expect("redis waiter panicked")?;
    Ok(out)
}

fn redis_death(addr: std::net::SocketAddr, opts: &Options) -> Result<Samples> {
    let key = "bench:death";
    let mut out = Samples::default();
    let mut waiter = RedisConn::connect(addr, opts.redis_ttl, opts.retry_delay)?;
    for _ in 0..opts.redis_death_samples {
        let mut doomed = RedisConn::connect(addr, opts.redis_ttl, opts.retry_delay)?;
        doomed.lock(key)?;
        let began = Instant::now();
        drop(doomed);
        waiter.lock(key)?;
        out.push(began.elapsed());
        waiter.unlock(key)?;
    }
    Ok(out)
}
