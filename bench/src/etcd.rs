//! etcd's own lock API (v3lock: `Lock`/`Unlock`, what `etcdctl lock` uses) as the peer of
//! a lockd cluster: the lock service one gets from the same etcd without lockd. Each
//! connection is its own etcd client (one HTTP/2 channel to one member) driven from its
//! own thread, like a PHP worker, through a single-threaded tokio runtime.
//!
//! A connection grants itself one lease when it connects and attaches every lock to it,
//! as a client of the lock API must (the lease plays the part of a lockd session); with
//! no lease, every `Lock` would grant one more. Lease TTL: [`LEASE_TTL`], longer than
//! any run, so it is never kept alive and nobody's lock expires.

use anyhow::{bail, Context, Result};
use etcd_client::{Client, GetOptions, LockOptions};
use tokio::runtime::Runtime;

use crate::client::Locker;

/// Longer than any benchmark run: no keep-alive needed.
const LEASE_TTL: i64 = 3600;

pub struct EtcdConn {
    runtime: Runtime,
    client: Client,
    lease: i64,
    /// The ownership key `Lock` returned for each key held: `Unlock` takes it.
    held: Vec<(String, Vec<u8>)>,
}

impl EtcdConn {
    /// Connects to the member at `url` (http://HOST:PORT) and grants the connection's lease.
    pub fn connect(url: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (client, lease) = runtime.block_on(async {
            let mut client = Client::connect([url], None).await?;
            let lease = client.lease_grant(LEASE_TTL, None).await?.id();
            anyhow::Ok((client, lease))
        })
        .with_context(|| format!("connecting to etcd at {url}"))?;
        Ok(EtcdConn { runtime, client, lease, held: Vec::new() })
    }

    /// One plain write (a put of a small value): the unit an etcd-backed service pays per
    /// change, and the yardstick of a lockd cluster's handoff.
    pub fn put(&mut self, key: &str) -> Result<()> {
        self.runtime.block_on(self.client.put(key, "x", None))?;
        Ok(())
    }

    /// How many keys start with `prefix` (a serializable read of the member's own copy).
    pub fn count_prefix(&mut self, prefix: &str) -> Result<i64> {
        let options = GetOptions::new().with_prefix().with_count_only().with_serializable();
        Ok(self.runtime.block_on(self.client.get(prefix, Some(options)))?.count())
    }
}

impl Locker for EtcdConn {
    fn lock(&mut self, key: &str) -> Result<()> {
        let options = LockOptions::new().with_lease(self.lease);
        let owner_key = self.runtime.block_on(self.client.lock(key, Some(options)))?.key().to_vec();
        self.held.push((key.to_owned(), owner_key));
        Ok(())
    }

    fn unlock(&mut self, key: &str) -> Result<()> {
        let Some(i) = self.held.iter().position(|(k, _)| k == key) else { bail!("etcd: {key} is not held here") };
        let (_, owner_key) = self.held.swap_remove(i);
        self.runtime.block_on(self.client.unlock(owner_key))?;
        Ok(())
    }

    /// A linearizable read of one key: one round trip through the leader.
    fn ping(&mut self) -> Result<()> {
        self.runtime.block_on(self.client.get("bench:ping", None))?;
        Ok(())
    }

    fn lock_many(&mut self, _keys: &[String]) -> Result<()> {
        bail!("etcd is only measured by `pairs` and `latency`")
    }

    fn memory_and_clients(&mut self) -> Result<(u64, u64)> {
        bail!("etcd is only measured by `pairs` and `latency`")
    }
}
