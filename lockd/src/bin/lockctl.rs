//! `lockctl`: lockd's admin CLI. Asks a running lockd what it holds (`stat`, `locks`,
//! `who`), whether it answers (`ping`), and closes a connection (`kick`, admin only).
//! Speaks the native protocol through pklock-proto over a blocking socket.

use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use pklock_proto::auth::{AuthKey, Nonce, Proof};
use pklock_proto::frame::{read_frame, write_frame};
use pklock_proto::{
    AuthParams, AuthResult, HelloParams, HelloResult, KeyInfo, KickParams, KickResult, LocksParams, LocksResult, NoParams, PingResult, ReplyIn, RequestOut,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The largest reply read: a full `locks` page is far below it.
const MAX_REPLY: usize = 64 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "lockctl",
    version,
    about = "Ask a running lockd what it holds, and close connections (admin)",
    after_help = "Exit status: 0 done; 1 the server could not be reached, refused the command or \
answered an error (the reason is on stderr); 2 bad usage."
)]
struct Cli {
    /// lockd's native listener.
    #[arg(long, value_name = "HOST:PORT", env = "LOCKCTL_SERVER", default_value = "127.0.0.1:11300")]
    server: String,

    /// File holding lockd's auth key (its --auth-key-file), when it has one.
    #[arg(long, value_name = "PATH", env = "LOCKCTL_AUTH_KEY_FILE")]
    auth_key_file: Option<String>,

    /// Seconds to wait for the connection and for each reply.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    timeout: f64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Counters: connections, locks, waiters, grants, timeouts, deadlocks, memory.
    Stat,
    /// Every lock held and every request waiting, as a table.
    Locks {
        /// Only keys that start with this.
        #[arg(long)]
        prefix: Option<String>,
        /// The server's replies as they are: one JSON object per page, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Who holds KEY and who waits for it.
    Who { key: String },
    /// Close connection CONNECTION (an id from `locks`), releasing its locks. Admin only:
    /// lockctl must connect from an address in lockd's --admin-from (loopback by default).
    Kick { connection: u64 },
    /// Check that lockd answers, and how fast.
    Ping,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let timeout = Duration::try_from_secs_f64(cli.timeout).map_err(|_| anyhow!("--timeout {} is not a usable number of seconds", cli.timeout))?;
    let key = cli.auth_key_file.as_deref().map(lockd::config::read_auth_key_file).transpose().map_err(|e| anyhow!(e))?;
    let mut client = Client::connect(&cli.server, timeout, key.as_ref())?;
    match cli.command {
        Command::Stat => stat(&mut client),
        Command::Locks { prefix, json } => locks(&mut client, prefix, json),
        Command::Who { key } => who(&mut client, &key),
        Command::Kick { connection } => kick(&mut client, connection),
        Command::Ping => {
            let started = Instant::now();
            let PingResult { .. } = client.call("ping", NoParams {})?;
            println!("pong from {} in {:.3} ms", cli.server, started.elapsed().as_secs_f64() * 1e3);
            Ok(())
        }
    }
}

fn stat(client: &mut Client) -> Result<()> {
    let Value::Object(fields) = client.call::<_, Value>("stat", NoParams {})? else { bail!("stat: the reply is not an object") };
    let width = fields.keys().map(String::len).max().unwrap_or(0);
    for (name, value) in fields {
        let shown = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        println!("{name:width$}  {shown}");
    }
    Ok(())
}

/// Every page of `locks`, passing each to `page`.
fn each_page(client: &mut Client, prefix: Option<String>, mut page: impl FnMut(Value) -> Result<()>) -> Result<()> {
    let mut after = None;
    loop {
        let raw: Value = client.call("locks", LocksParams { prefix: prefix.clone(), limit: None, after })?;
        let next = raw.get("next").and_then(Value::as_str).map(str::to_owned);
        page(raw)?;
        match next {
            Some(next) => after = Some(next),
            None => return Ok(()),
        }
    }
}

fn locks(client: &mut Client, prefix: Option<String>, json: bool) -> Result<()> {
    if json {
        return each_page(client, prefix, |raw| {
            println!("{raw}");
            Ok(())
        });
    }
    let mut rows = vec![["KEY", "MODE", "CONNECTION", "OWNER", "PEER", "CLIENT", "TOKEN", "HELD FOR", "WAITERS"].map(String::from).to_vec()];
    each_page(client, prefix, |raw| {
        let page: LocksResult = serde_json::from_value(raw).context("locks: unexpected reply")?;
        for key in page.keys {
            rows.extend(key_rows(&key));
        }
        Ok(())
    })?;
    if rows.len() == 1 {
        println!("no locks held, no requests waiting");
        return Ok(());
    }
    print_table(&rows);
    Ok(())
}

/// One row per holder of `key`; a key only waited for gets one row with no holder.
fn key_rows(key: &KeyInfo) -> Vec<Vec<String>> {
    let waiters = key.waiters.len().to_string();
    if key.holders.is_empty() {
        return vec![vec![key.key.clone(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into(), waiters]];
    }
    key.holders
        .iter()
        .map(|h| {
            let mode = if h.lingering { format!("{} (lingering)", mode_name(h.mode)) } else { mode_name(h.mode).into() };
            let client = h.client.clone().unwrap_or_else(|| "-".into());
            vec![key.key.clone(), mode, h.connection.to_string(), h.owner.to_string(), h.peer.clone(), client, h.token.to_string(), seconds(h.held_for), waiters.clone()]
        })
        .collect()
}

fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, &w)| format!("{cell:w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

fn who(client: &mut Client, key: &str) -> Result<()> {
    let page: LocksResult = client.call("locks", LocksParams { prefix: Some(key.to_owned()), limit: None, after: None })?;
    // Keys come in order, so the key itself, if present, is the first with it as prefix.
    let Some(info) = page.keys.into_iter().next().filter(|k| k.key == key) else {
        println!("{key}: free, nobody waits");
        return Ok(());
    };
    if info.holders.is_empty() {
        println!("{key}: free");
    } else {
        println!("{key}: held by");
    }
    for h in &info.holders {
        let lingering = if h.lingering { ", lingering after its connection died" } else { "" };
        let client = h.client.as_deref().map_or_else(String::new, |c| format!(", {c}"));
        println!(
            "  connection {} owner {} ({}{client}), {}, token {}, for {}{lingering}",
            h.connection,
            h.owner,
            h.peer,
            mode_name(h.mode),
            h.token,
            seconds(h.held_for)
        );
    }
    if !info.waiters.is_empty() {
        println!("waiting, next first:");
    }
    for (place, w) in info.waiters.iter().enumerate() {
        let gives_up = w.gives_up_in.map_or_else(|| "waits as long as it takes".to_owned(), |s| format!("gives up in {}", seconds(s)));
        println!("  {}. connection {} owner {} ({}), {}, for {}, {gives_up}", place + 1, w.connection, w.owner, w.peer, mode_name(w.mode), seconds(w.waited_for));
    }
    Ok(())
}

fn kick(client: &mut Client, connection: u64) -> Result<()> {
    let KickResult { kicked } = client.call("kick", KickParams { connection })?;
    if !kicked {
        bail!("no connection {connection} (it may have closed already; `lockctl locks` lists the connections holding locks)");
    }
    println!("connection {connection} closed; its locks are released");
    Ok(())
}

fn mode_name(mode: pklock_proto::Mode) -> &'static str {
    match mode {
        pklock_proto::Mode::Exclusive => "exclusive",
        pklock_proto::Mode::Shared => "shared",
    }
}

fn seconds(s: f64) -> String {
    format!("{s:.1}s")
}

/// A blocking connection to lockd, past `hello` (and `auth` when the server wants it).
struct Client {
    stream: TcpStream,
    server: String,
    next_id: u64,
}

impl Client {
    fn connect(server: &str, timeout: Duration, key: Option<&AuthKey>) -> Result<Client> {
        let addrs: Vec<_> = server.to_socket_addrs().with_context(|| format!("cannot resolve {server}"))?.collect();
        let stream = addrs
            .iter()
            .find_map(|addr| TcpStream::connect_timeout(addr, timeout).ok())
            .ok_or_else(|| anyhow!("cannot connect to lockd at {server} (is it running? --server HOST:PORT)"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut client = Client { stream, server: server.to_owned(), next_id: 0 };
        let hello: HelloResult = client.call("hello", HelloParams { client: Some(format!("lockctl {}", env!("CARGO_PKG_VERSION"))), ..Default::default() })?;
        if let Some(challenge) = hello.auth {
            let key = key.ok_or_else(|| anyhow!("lockd at {server} needs its auth key: give --auth-key-file PATH"))?;
            client.authenticate(key, &challenge.nonce)?;
        }
        Ok(client)
    }

    /// Answers the challenge, and checks the server's proof that it knows the key too.
    fn authenticate(&mut self, key: &AuthKey, nonce: &str) -> Result<()> {
        let server_nonce = Nonce::parse(nonce).map_err(|e| anyhow!("the server's challenge is malformed: {e}"))?;
        let client_nonce = Nonce::random().map_err(|e| anyhow!("cannot make a nonce: {e}"))?;
        let proof = Proof::Client.compute(key, &server_nonce, &client_nonce);
        let result: AuthResult = self.call("auth", AuthParams { client_nonce: client_nonce.as_str().into(), proof })?;
        if !Proof::Server.verify(key, &server_nonce, &client_nonce, &result.server_proof) {
            bail!("the server at {} could not prove it has the same auth key", self.server);
        }
        Ok(())
    }

    /// Sends one request and returns its result; an error reply becomes an error.
    fn call<P: Serialize, R: DeserializeOwned>(&mut self, command: &str, parameters: P) -> Result<R> {
        self.next_id += 1;
        let id = self.next_id;
        write_frame(&mut self.stream, &RequestOut { id, command, parameters }).with_context(|| format!("{command}: cannot send to {}", self.server))?;
        let mut payload = Vec::new();
        read_frame(&mut self.stream, MAX_REPLY, &mut payload).with_context(|| format!("{command}: no reply from {}", self.server))?;
        let reply: ReplyIn = serde_json::from_slice(&payload).with_context(|| format!("{command}: the reply is not JSON"))?;
        if let Some(error) = reply.error {
            bail!("{command}: {} ({})", error.message, error.code.as_str());
        }
        if reply.id != id {
            bail!("{command}: the reply is for request {}, not {id}", reply.id);
        }
        let result = reply.result.ok_or_else(|| anyhow!("{command}: the reply has no result"))?;
        serde_json::from_value(result).with_context(|| format!("{command}: unexpected reply"))
    }
}
