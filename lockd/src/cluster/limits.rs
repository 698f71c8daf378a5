//! The table limits every node of a cluster must share. The table's refusals (too many
//! locks or waits, memory, the deadlock budget) are decisions every node takes alike from
//! the log, so the first node writes its limits to `<prefix>/config` and every later node
//! compares its own with them, limit by limit, and refuses to start on any difference,
//! naming the flags to change.
//!
//! A limit added by a newer lockd is absent from a config written by an older one; the
//! value the older nodes decided as stands in for it, so that a cluster can be upgraded one
//! node at a time (docs/CLUSTER.md, "Upgrading").

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde_json::{Map, Value};

use super::log::Keys;
use super::{etcd, ClusterError};
use crate::table::Limits;

/// One shared limit: its name in `<prefix>/config`, the flag that sets it, its value.
struct Shared {
    field: &'static str,
    flag: &'static str,
    value: usize,
}

fn shared(limits: &Limits) -> [Shared; 7] {
    let limit = |field, flag, value| Shared { field, flag, value };
    [
        limit("max_locks", "--max-locks", limits.max_locks),
        limit("max_memory", "--max-memory", limits.max_memory),
        limit("max_waiters", "--max-waiters", limits.max_waiters),
        limit("max_waiters_per_connection", "--max-waiters-per-connection", limits.max_waiters_per_connection),
        limit("deadlock_budget", "--deadlock-budget", limits.deadlock_budget),
        limit("max_keys", "--max-keys", limits.max_keys),
        limit("max_key_len", "--max-key-length", limits.max_key_len),
    ]
}

/// `<prefix>/config` as this node writes it (fields in name order, as every version wrote them).
fn record(limits: &Limits) -> String {
    let fields: Map<String, Value> = shared(limits).into_iter().map(|s| (s.field.to_owned(), Value::from(s.value))).collect();
    Value::Object(fields).to_string()
}

/// What a config written before `field` existed decided as, given that config.
fn older_equivalent(field: &str, config: &Map<String, Value>) -> Option<(u64, &'static str)> {
    match field {
        // A connection's waits were bounded only by the server-wide limit, and a limit per
        // connection equal to that one never refuses anything the server-wide one allows.
        "max_waiters_per_connection" => config
            .get("max_waiters")
            .and_then(Value::as_u64)
            .map(|all| (all, "its config was written by a lockd without this limit, which bounded a connection's waits only by --max-waiters")),
        _ => None,
    }
}

/// Every limit on which the cluster's config (`theirs`) and `ours` disagree, one line each;
/// empty when they agree.
fn differences(theirs: &str, ours: &Limits) -> Result<Vec<String>, String> {
    let config = match serde_json::from_str::<Value>(theirs) {
        Ok(Value::Object(config)) => config,
        _ => return Err(format!("unreadable: {theirs:?}")),
    };
    let known = shared(ours);
    if let Some(unknown) = config.keys().find(|field| !known.iter().any(|s| s.field == field.as_str())) {
        return Err(format!("written by a newer lockd: it has {unknown}, a limit this lockd does not apply; upgrade this node"));
    }
    let mut lines = Vec::new();
    for limit in known {
        let (cluster, why) = match config.get(limit.field) {
            Some(value) => (value.as_u64().ok_or_else(|| format!("unreadable {}: {value}", limit.field))?, None),
            None => match older_equivalent(limit.field, &config) {
                Some((value, why)) => (value, Some(why)),
                None => return Err(format!("it has no {}, and no older lockd went without it: {theirs}", limit.field)),
            },
        };
        if cluster != limit.value as u64 {
            let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
            lines.push(format!("{}: the cluster's {cluster}{why}, this node's {}", limit.flag, limit.value));
        }
    }
    Ok(lines)
}

/// Writes our limits if this is the cluster's first node, else checks ours against the
/// cluster's.
pub async fn agree(client: &mut Client, keys: &Keys, limits: &Limits) -> Result<(), ClusterError> {
    let ours = record(limits);
    let txn = Txn::new()
        .when([Compare::create_revision(keys.config(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(keys.config(), ours, None)])
        .or_else([TxnOp::get(keys.config(), None)]);
    let response = etcd("writing the cluster's limits", client.txn(txn)).await?;
    if response.succeeded() {
        return Ok(());
    }
    let theirs = match response.op_responses().into_iter().next() {
        Some(etcd_client::TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
        _ => None,
    }
    .unwrap_or_default();
    let config = keys.config();
    match differences(&theirs, limits) {
        Ok(lines) if lines.is_empty() => Ok(()),
        Ok(lines) => Err(ClusterError::LimitsDiffer { config, differences: lines.join("; ") }),
        Err(problem) => Err(ClusterError::UnreadableLimits { config, problem }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_this_node_wrote_agrees_and_every_changed_limit_is_named_by_its_flag() {
        let ours = Limits::default();
        assert_eq!(differences(&record(&ours), &ours), Ok(vec![]));
        let other = Limits { max_locks: 5, max_key_len: 64, ..Limits::default() };
        assert_eq!(
            differences(&record(&other), &ours),
            Ok(vec![
                "--max-locks: the cluster's 5, this node's 10000000".to_owned(),
                "--max-key-length: the cluster's 64, this node's 1024".to_owned(),
            ])
        );
    }

    #[test]
    fn the_config_keeps_the_layout_earlier_versions_wrote() {
        // Nodes of the previous version compare the text as a whole.
        assert_eq!(
            record(&Limits::default()),
            r#"{"deadlock_budget":100000,"max_key_len":1024,"max_keys":1024,"max_locks":10000000,"max_memory":4294967296,"max_waiters":1000000,"max_waiters_per_connection":10000}"#
        );
    }

    #[test]
    fn a_config_written_before_the_per_connection_limit_agrees_with_a_node_that_decides_alike() {
        let older = r#"{"deadlock_budget":100000,"max_key_len":1024,"max_keys":1024,"max_locks":10000000,"max_memory":4294967296,"max_waiters":1000000}"#;
        let alike = Limits { max_waiters_per_connection: 1_000_000, ..Limits::default() };
        assert_eq!(differences(older, &alike), Ok(vec![]));
        let lines = differences(older, &Limits::default()).unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("--max-waiters-per-connection: the cluster's 1000000 (its config was written by a lockd without this limit"), "{}", lines[0]);
    }

    #[test]
    fn a_config_that_cannot_be_read_or_has_limits_this_node_does_not_know_is_refused_saying_so() {
        assert!(differences("not json", &Limits::default()).unwrap_err().contains("unreadable"));
        assert!(differences(r#"{"max_locks":"many"}"#, &Limits::default()).unwrap_err().contains("max_locks"));
        assert!(differences(r#"{"max_locks":1}"#, &Limits::default()).unwrap_err().contains("no max_memory"));
        let newer = record(&Limits::default()).replace('}', r#","max_something":1}"#);
        assert!(differences(&newer, &Limits::default()).unwrap_err().contains("written by a newer lockd: it has max_something"));
    }
}
