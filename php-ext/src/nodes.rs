//! The servers of a client: one lockd address, or the nodes of a lockd cluster written as a
//! list (`10.0.0.1:11300,10.0.0.2`, `[::1]:11300`), parsed once at construction; and the
//! random order in which a client tries them.

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

/// The order in which to try `count` nodes: random, so that the clients of a cluster spread
/// over its nodes; `last` (the node just lost) goes at the end.
pub fn connect_order(count: usize, last: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).filter(|&i| Some(i) != last).collect();
    // Fisher-Yates. Without the OS's randomness the order is the list's: still correct.
    for i in (1..order.len()).rev() {
        let j = getrandom::u64().map_or(i, |random| (random % (i as u64 + 1)) as usize);
        order.swap(i, j);
    }
    order.extend(last.filter(|&i| i < count));
    order
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn connect_order_tries_every_node_once_and_the_lost_one_last() {
        for _ in 0..50 {
            let order = connect_order(4, Some(2));
            assert_eq!(order.len(), 4);
            assert_eq!(order[3], 2);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3]);
        }
        assert_eq!(connect_order(1, None), [0]);
        assert_eq!(connect_order(1, Some(0)), [0]);
    }

    #[test]
    fn connect_order_is_random() {
        let firsts: std::collections::HashSet<usize> = (0..200).map(|_| connect_order(3, None)[0]).collect();
        assert_eq!(firsts.len(), 3, "every node comes first sometimes");
    }
}
