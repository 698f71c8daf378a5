//! Latencies of single events, one at a time on an otherwise idle server:
//! - ping: one request's round trip just before each handoff, the yardstick for it;
//! - handoff: the holder sends its release → the next waiter has its grant;
//! - death: the holder's connection is closed (its process died) → the waiter has it.
//!
//! lockd's waiter is queued on the server, so one thread times both sides: it sends the
//! release (or closes the holder) and then reads the waiter's socket, which holds the
//! grant as soon as lockd sent it. On a lockd cluster the holder and the waiter are
//! connected to different nodes, so every grant crosses etcd. A Redis waiter has no queue
//! to sit in: it polls with `SET NX` from its own thread, and death waits for the dead
//! holder's TTL. An etcd waiter blocks in `Lock` (the member waits for the holder's key
//! to go) in its own thread; etcd's yardstick is one plain write (a put), and its death
//! is its lease's TTL, not measured.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::client::{LockdConn, Locker, RedisConn, Server};
use crate::etcd::EtcdConn;
use crate::report::Samples;

pub struct Options {
    pub samples: usize,
    /// Death samples on Redis, each of which lasts a whole TTL.
    pub redis_death_samples: usize,
    pub redis_ttl: Duration,
    pub retry_delay: Duration,
}

pub fn run(server: &Server, opts: &Options) -> Result<()> {
    let name = server.name();
    // Pings are timed in the same loop as the handoffs, alternating, so both see the
    // same scheduling luck (on a VM an idle CPU takes tens of µs to wake).
    let mut ping = Samples::default();
    let (mut handoff, death) = match server {
        Server::Lockd(nodes) => {
            // The first two nodes of a cluster; the same lockd twice otherwise.
            let (holder_node, waiter_node) = (nodes[0], nodes[1 % nodes.len()]);
            let mut control = LockdConn::connect(waiter_node)?;
            let handoff = lockd_handoff(holder_node, waiter_node, &mut control, opts.samples, &mut ping)?;
            (handoff, Some(lockd_death(holder_node, waiter_node, &mut control, opts.samples)?))
        }
        // Redis cannot tell a dead holder from a slow one: its lock lives out the TTL.
        Server::Redis(addr) => (redis_handoff(*addr, opts, &mut ping)?, Some(redis_death(*addr, opts)?)),
        Server::Etcd(members) => {
            let handoff = etcd_handoff(&members[0], &members[1 % members.len()], opts.samples, &mut ping)?;
            ping.emit_quantiles(name, "write", "one etcd put, timed just before each handoff");
            (handoff, None)
        }
    };
    let spread = match server {
        Server::Lockd(nodes) => nodes.len() > 1,
        Server::Etcd(members) => members.len() > 1,
        Server::Redis(_) => false,
    };
    let across = if spread { ", waiter on another node" } else { "" };
    if !matches!(server, Server::Etcd(_)) {
        ping.emit_quantiles(name, "ping", "one request, timed just before each handoff");
    }
    handoff.emit_quantiles(name, "handoff", &format!("release → next waiter granted{across}"));
    if let Some(mut death) = death {
        death.emit_quantiles(name, "death", &format!("holder's connection closed{across}"));
    }
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

fn lockd_handoff(holder_node: SocketAddr, waiter_node: SocketAddr, control: &mut LockdConn, samples: usize, ping: &mut Samples) -> Result<Samples> {
    let mut out = Samples::default();
    let (mut holder, mut waiter) = (LockdConn::connect(holder_node)?, LockdConn::connect(waiter_node)?);
    let key = "bench:handoff";
    holder.lock(key)?;
    for _ in 0..samples {
        let lock = waiter.send_lock(key)?;
        await_waiters(control, 1)?;
        time_ping(&mut holder, ping)?;
        let began = Instant::now();
        let unlock = holder.send_unlock(key, false)?;
        waiter.recv_grant(lock)?;
        out.push(began.elapsed());
        holder.recv_unlocked(unlock)?;
        // The waiter now holds it; swap roles for the next sample.
        std::mem::swap(&mut holder, &mut waiter);
    }
    holder.unlock(key)?;
    Ok(out)
}

fn lockd_death(holder_node: SocketAddr, waiter_node: SocketAddr, control: &mut LockdConn, samples: usize) -> Result<Samples> {
    let mut out = Samples::default();
    let key = "bench:death";
    for _ in 0..samples {
        let mut doomed = LockdConn::connect(holder_node)?;
        doomed.lock(key)?;
        let mut waiter = LockdConn::connect(waiter_node)?;
        let lock = waiter.send_lock(key)?;
        await_waiters(control, 1)?;
        let began = Instant::now();
        drop(doomed);
        waiter.recv_grant(lock)?;
        out.push(began.elapsed());
        waiter.unlock(key)?;
    }
    Ok(out)
}

/// A waiter thread polls `SET NX`; the holder releases once the waiter has failed at
/// least once. Timed from just before the release is sent to the waiter's success.
fn redis_handoff(addr: SocketAddr, opts: &Options, ping: &mut Samples) -> Result<Samples> {
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

fn redis_death(addr: SocketAddr, opts: &Options) -> Result<Samples> {
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

/// The holder takes the lock; a waiter thread (on the other member) blocks in `Lock`;
/// once its key is there and its wait has settled, the holder times one put, then its
/// `Unlock` → the waiter's `Lock` returns. At most [`ETCD_HANDOFFS`] samples.
fn etcd_handoff(holder_member: &str, waiter_member: &str, samples: usize, writes: &mut Samples) -> Result<Samples> {
    /// A waiter's `Lock` writes its own key, then watches the key ahead of it from the
    /// revision it read: such a watch starts "unsynced", and etcd catches unsynced
    /// watches up every 100 ms, so a release in that time reaches the waiter up to 100 ms
    /// late. That is etcd's behaviour for short holds; this measures a settled waiter.
    const SETTLE: Duration = Duration::from_millis(120);
    /// Each sample settles for 120 ms.
    const ETCD_HANDOFFS: usize = 100;
    let samples = samples.min(ETCD_HANDOFFS);
    let key = "bench:handoff";
    let mut holder = EtcdConn::connect(holder_member)?;
    let mut waiter = EtcdConn::connect(waiter_member)?;
    let (got_tx, got_rx) = mpsc::channel::<Instant>();
    let (next_tx, next_rx) = mpsc::channel::<()>();
    let waiting = std::thread::spawn(move || -> Result<()> {
        while next_rx.recv().is_ok() {
            waiter.lock(key)?;
            got_tx.send(Instant::now())?;
            waiter.unlock(key)?;
        }
        Ok(())
    });
    let mut out = Samples::default();
    for _ in 0..samples {
        holder.lock(key)?;
        next_tx.send(())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while holder.count_prefix(&format!("{key}/"))? < 2 {
            if Instant::now() > deadline {
                bail!("etcd never showed the waiter's key");
            }
        }
        std::thread::sleep(SETTLE);
        let began = Instant::now();
        holder.put("bench:write")?;
        writes.push(began.elapsed());
        let began = Instant::now();
        holder.unlock(key)?;
        out.push(got_rx.recv()? - began);
    }
    drop(next_tx);
    waiting.join().expect("etcd waiter panicked")?;
    Ok(out)
}
