//! The servers of a client: one lockd address, or the nodes of a lockd cluster written as a
//! list (`10.0.0.1:11300,10.0.0.2`, `[::1]:11300`), parsed once at construction; and the
//! order in which a client tries them (`pklock.node_order`).

use std::cmp::Reverse;
use std::sync::OnceLock;

/// One lockd address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl Node {
    /// `host:port` (`[v6]:port`), the address shown in messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What is wrong with a node list; worded to follow "Argument #1 ($host) ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeListError {
    #[error("must not be empty")]
    Empty,
    #[error("must not have an empty entry (a list is host:port,host:port,...)")]
    EmptyEntry,
    #[error("has an entry without a host: {0:?}")]
    NoHost(String),
    #[error("has an entry with a bad port: {0:?} (a port is 1 to 65535)")]
    BadPort(String),
    #[error("has an entry with a bad IPv6 address: {0:?} (write [address]:port)")]
    BadBrackets(String),
}

/// Parses `list`: comma-separated entries, each `host`, `host:port`, `[v6]`, `[v6]:port` or a
/// bare IPv6 address (several colons, no brackets: all of it is the address, as a single
/// host always was). `default_port` serves entries without one.
pub fn parse(list: &str, default_port: u16) -> Result<Vec<Node>, NodeListError> {
    if list.trim().is_empty() {
        return Err(NodeListError::Empty);
    }
    list.split(',').map(|entry| parse_entry(entry.trim(), default_port)).collect()
}

fn parse_entry(entry: &str, default_port: u16) -> Result<Node, NodeListError> {
    if entry.is_empty() {
        return Err(NodeListError::EmptyEntry);
    }
    let (host, port) = if let Some(bracketed) = entry.strip_prefix('[') {
        let (host, rest) = bracketed.split_once(']').ok_or_else(|| NodeListError::BadBrackets(entry.to_owned()))?;
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':').ok_or_else(|| NodeListError::BadBrackets(entry.to_owned()))?)),
        }
    } else {
        match entry.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            _ => (entry, None),
        }
    };
    if host.is_empty() {
        return Err(NodeListError::NoHost(entry.to_owned()));
    }
    let port = match port {
        None => default_port,
        Some(port) => port.parse().ok().filter(|&port| port != 0).ok_or_else(|| NodeListError::BadPort(entry.to_owned()))?,
    };
    Ok(Node { host: host.to_owned(), port })
}

/// How a client orders a cluster's nodes when it connects or resumes (`pklock.node_order`,
/// option `node_order`). Whatever the order, every node is tried before giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeOrder {
    /// One order for every process of a host, another from host to host. A node writes its
    /// clients' requests to etcd in one batch at a time, so a host's processes on one node
    /// share batches (16 processes: ~1.8× the pairs/s of spreading them, BENCHMARKS.md),
    /// while hosts spread over the nodes. With many hosts a node serves about as many
    /// processes as in random order: no bigger batches then, but no smaller.
    Host,
    /// Each connection its own random order: a host's processes spread over the nodes.
    Random,
    /// The list's own order: the first node that answers (one node for every client given
    /// the same list; a preferred node set by hand).
    List,
}

impl NodeOrder {
    /// The values `pklock.node_order` and the option take, for messages.
    pub const CHOICES: &str = "'host', 'random' or 'list'";

    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "host" => Some(NodeOrder::Host),
            "random" => Some(NodeOrder::Random),
            "list" => Some(NodeOrder::List),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NodeOrder::Host => "host",
            NodeOrder::Random => "random",
            NodeOrder::List => "list",
        }
    }
}

/// The order in which to try `nodes`, as `order` says; `last` (the node just lost) goes at
/// the end.
pub fn connect_order(nodes: &[Node], order: NodeOrder, last: Option<usize>) -> Vec<usize> {
    let mut ranked: Vec<usize> = (0..nodes.len()).filter(|&i| Some(i) != last).collect();
    match order {
        NodeOrder::Host => rank_for_host(host_name(), nodes, &mut ranked),
        NodeOrder::Random => shuffle(&mut ranked),
        NodeOrder::List => {}
    }
    ranked.extend(last.filter(|&i| i < nodes.len()));
    ranked
}

/// Rendezvous hashing: each node ranked by a hash of the host's name and the node's address.
/// Every process of a host ranks alike, even with the list written in another order; other
/// hosts rank differently, evenly over the nodes; a node added to or taken off the list
/// moves only the hosts that rank it first.
fn rank_for_host(host: &[u8], nodes: &[Node], ranked: &mut [usize]) {
    ranked.sort_by_cached_key(|&i| {
        let seed = [host, &[0][..], nodes[i].addr().as_bytes()].concat();
        Reverse(xxhash_rust::xxh3::xxh3_64(&seed))
    });
}

/// This machine's name (gethostname), read once per process: a container's is its own.
/// Without one (the call failed) every process ranks by the empty name: still one order.
fn host_name() -> &'static [u8] {
    static NAME: OnceLock<Vec<u8>> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut buffer = [0u8; 256];
        // SAFETY: gethostname writes at most buffer.len() bytes into the buffer.
        let failed = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } != 0;
        let length = if failed { 0 } else { buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len()) };
        buffer[..length].to_vec()
    })
}

/// Fisher-Yates. Without the OS's randomness the order is the list's: still correct.
fn shuffle(order: &mut [usize]) {
    for i in (1..order.len()).rev() {
        let j = getrandom::u64().map_or(i, |random| (random % (i as u64 + 1)) as usize);
        order.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn node(host: &str, port: u16) -> Node {
        Node { host: host.into(), port }
    }

    #[test]
    fn a_single_host_is_one_node_on_the_default_port() {
        assert_eq!(parse("127.0.0.1", 11300), Ok(vec![node("127.0.0.1", 11300)]));
        assert_eq!(parse("lockd.internal", 7), Ok(vec![node("lockd.internal", 7)]));
        // A bare IPv6 address, as a single host always could be.
        assert_eq!(parse("::1", 11300), Ok(vec![node("::1", 11300)]));
        assert_eq!(parse("::1", 11300).unwrap()[0].addr(), "[::1]:11300");
    }

    #[test]
    fn a_list_names_each_node_with_or_without_its_port() {
        assert_eq!(
            parse("10.0.0.1:11301, 10.0.0.2,[::1]:11302,[fe80::2]", 11300),
            Ok(vec![node("10.0.0.1", 11301), node("10.0.0.2", 11300), node("::1", 11302), node("fe80::2", 11300)])
        );
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        assert_eq!(parse(" ", 1), Err(NodeListError::Empty));
        assert_eq!(parse("a,,b", 1), Err(NodeListError::EmptyEntry));
        assert_eq!(parse("a,", 1), Err(NodeListError::EmptyEntry));
        assert_eq!(parse(":11300", 1), Err(NodeListError::NoHost(":11300".into())));
        assert_eq!(parse("a:x", 1), Err(NodeListError::BadPort("a:x".into())));
        assert_eq!(parse("a:0", 1), Err(NodeListError::BadPort("a:0".into())));
        assert_eq!(parse("a:70000", 1), Err(NodeListError::BadPort("a:70000".into())));
        assert_eq!(parse("a:", 1), Err(NodeListError::BadPort("a:".into())));
        assert_eq!(parse("[::1", 1), Err(NodeListError::BadBrackets("[::1".into())));
        assert_eq!(parse("[::1]11300", 1), Err(NodeListError::BadBrackets("[::1]11300".into())));
        assert_eq!(parse("[]:1", 1), Err(NodeListError::NoHost("[]:1".into())));
    }

    fn cluster(count: usize) -> Vec<Node> {
        (0..count).map(|i| node(&format!("10.0.0.{}", i + 1), 11300)).collect()
    }

    #[test]
    fn connect_order_tries_every_node_once_and_the_lost_one_last() {
        let nodes = cluster(4);
        for order in [NodeOrder::Host, NodeOrder::Random, NodeOrder::List] {
            for _ in 0..50 {
                let tried = connect_order(&nodes, order, Some(2));
                assert_eq!(tried.len(), 4);
                assert_eq!(tried[3], 2, "{order:?}");
                let mut sorted = tried.clone();
                sorted.sort();
                assert_eq!(sorted, [0, 1, 2, 3], "{order:?}");
            }
            assert_eq!(connect_order(&nodes[..1], order, None), [0]);
            assert_eq!(connect_order(&nodes[..1], order, Some(0)), [0]);
        }
    }

    #[test]
    fn connect_order_is_random() {
        let nodes = cluster(3);
        let firsts: HashSet<usize> = (0..200).map(|_| connect_order(&nodes, NodeOrder::Random, None)[0]).collect();
        assert_eq!(firsts.len(), 3, "every node comes first sometimes");
    }

    #[test]
    fn list_order_is_the_lists() {
        assert_eq!(connect_order(&cluster(3), NodeOrder::List, None), [0, 1, 2]);
        assert_eq!(connect_order(&cluster(3), NodeOrder::List, Some(0)), [1, 2, 0]);
    }

    #[test]
    fn host_order_is_the_same_for_every_process_of_a_host() {
        let nodes = cluster(3);
        let first = connect_order(&nodes, NodeOrder::Host, None);
        for _ in 0..20 {
            assert_eq!(connect_order(&nodes, NodeOrder::Host, None), first);
        }
        // Losing the preferred node, a host's processes all go to the same next one.
        assert_eq!(connect_order(&nodes, NodeOrder::Host, Some(first[0])), [first[1], first[2], first[0]]);
    }

    #[test]
    fn host_order_follows_the_nodes_not_how_the_list_is_written() {
        let nodes = cluster(3);
        let reversed: Vec<Node> = nodes.iter().rev().cloned().collect();
        for host in ["web1", "web2", "php-fpm-7f9c4d-x2k8q"] {
            let mut ranked = vec![0, 1, 2];
            rank_for_host(host.as_bytes(), &nodes, &mut ranked);
            let mut ranked_reversed = vec![0, 1, 2];
            rank_for_host(host.as_bytes(), &reversed, &mut ranked_reversed);
            let addrs = |list: &[Node], ranked: &[usize]| ranked.iter().map(|&i| list[i].addr()).collect::<Vec<_>>();
            assert_eq!(addrs(&nodes, &ranked), addrs(&reversed, &ranked_reversed), "{host}");
        }
    }

    #[test]
    fn host_order_spreads_hosts_over_the_nodes() {
        let nodes = cluster(3);
        let mut hosts_per_first_node = [0; 3];
        for host in 0..300 {
            let mut ranked = vec![0, 1, 2];
            rank_for_host(format!("web{host}").as_bytes(), &nodes, &mut ranked);
            hosts_per_first_node[ranked[0]] += 1;
        }
        // 100 each on average; the hash is fixed, so this holds on every run.
        assert!(hosts_per_first_node.iter().all(|&hosts| (70..=130).contains(&hosts)), "{hosts_per_first_node:?}");
    }

    #[test]
    fn node_orders_are_named() {
        for order in [NodeOrder::Host, NodeOrder::Random, NodeOrder::List] {
            assert_eq!(NodeOrder::parse(order.name()), Some(order));
        }
        assert_eq!(NodeOrder::parse(" Host "), Some(NodeOrder::Host));
        assert_eq!(NodeOrder::parse("hostname"), None);
        assert_eq!(NodeOrder::parse(""), None);
    }
}
