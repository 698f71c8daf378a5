//! `--metrics-listen`: Prometheus metrics over HTTP (`GET /metrics`), kept with the
//! `metrics` crates and rendered by `metrics-exporter-prometheus`.
//!
//! What the table already counts (locks, waiters, grants, timeouts, deadlocks) is read
//! from its stats when scraped, so the lock path pays nothing for it. Events outside the
//! table (connections, refusals, failed auth, locks released by a disconnect) are counted
//! where they happen: once per connection, not per request. The only per-request cost is
//! the latency histogram: two clock reads and a lock-free append, and none at all when
//! metrics are off.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Histogram, Unit};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::state::State;

/// The commands timed one by one; anything else is timed as `other`, so a client cannot
/// make up label values without end.
const TIMED_COMMANDS: [&str; 12] = ["hello", "auth", "lock", "unlock", "release_all", "ping", "stat", "locks", "check", "resume", "kick", "other"];

/// Histogram buckets of request handling time, in seconds: from a few microseconds (a
/// lock on a single lockd) to a second (a cluster's round trip through etcd under load).
const LATENCY_BUCKETS: [f64; 14] = [5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1, 0.5, 1.0];

/// Scrapes served at once; a connection beyond them is closed unanswered, so that whoever
/// reaches the port cannot take lockd's file descriptors.
pub const MAX_SCRAPERS: usize = 8;

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often samples recorded between scrapes are folded into the histograms, so that
/// they stay bounded when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

pub const REQUEST_SECONDS: &str = "lockd_request_duration_seconds";
pub const CONNECTIONS_OPENED: &str = "lockd_connections_opened_total";
pub const REFUSED: &str = "lockd_refused_connections_total";
pub const AUTH_FAILURES: &str = "lockd_auth_failures_total";
pub const DISCONNECT_RELEASED: &str = "lockd_disconnect_released_locks_total";

/// The installed recorder: how to render it, and the request histograms, looked up once.
#[derive(Debug)]
pub struct Telemetry {
    handle: PrometheusHandle,
    request_seconds: Vec<Histogram>,
}

impl Telemetry {
    /// Installs the process-wide recorder (once per process: it is global, as the `metrics`
    /// macros are) and describes every metric.
    pub fn install() -> Result<Telemetry, BuildError> {
        let handle = PrometheusBuilder::new().set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full(REQUEST_SECONDS.into()), &LATENCY_BUCKETS)?.install_recorder()?;
        describe();
        // Counted only when something happens: shown from the start, at zero.
        for reason in ["not_allowed", "too_many_clients"] {
            counter!(REFUSED, "reason" => reason).increment(0);
        }
        counter!(AUTH_FAILURES).increment(0);
        let request_seconds = TIMED_COMMANDS.iter().map(|&command| histogram!(REQUEST_SECONDS, "command" => command)).collect();
        Ok(Telemetry { handle, request_seconds })
    }

    /// Records how long lockd took to handle one request (not how long a lock waited).
    pub fn request_done(&self, command: Option<&str>, took: Duration) {
        self.request_seconds[timed_as(command)].record(took);
    }

    /// The exposition text, with the table's figures as of now.
    fn render(&self, shared: &State) -> String {
        let t = shared.stats();
        gauge!("lockd_locks_held").set(t.locks as f64);
        gauge!("lockd_lock_waiters").set(t.waiters as f64);
        gauge!("lockd_keys").set(t.keys as f64);
        gauge!("lockd_table_memory_bytes").set(t.memory as f64);
        gauge!("lockd_connections").set(shared.connections() as f64);
        counter!("lockd_grants_total").absolute(t.grants);
        counter!("lockd_wait_timeouts_total").absolute(t.timeouts);
        counter!("lockd_deadlocks_total").absolute(t.deadlocks);
        self.handle.render()
    }
}

/// The index in [`TIMED_COMMANDS`] a command is timed under.
fn timed_as(command: Option<&str>) -> usize {
    TIMED_COMMANDS.iter().position(|&c| Some(c) == command).unwrap_or(TIMED_COMMANDS.len() - 1)
}

fn describe() {
    describe_gauge!("lockd_locks_held", "(key, owner) locks held");
    describe_gauge!("lockd_lock_waiters", "lock requests waiting");
    describe_gauge!("lockd_keys", "distinct keys with a holder or a waiter");
    describe_gauge!("lockd_table_memory_bytes", Unit::Bytes, "estimated bytes of the lock table (what --max-memory bounds)");
    describe_gauge!("lockd_connections", "clients connected (native and eLock connections, MediaWiki sessions)");
    describe_counter!("lockd_grants_total", "locks granted (each grant of a request, at once or after a wait)");
    describe_counter!("lockd_wait_timeouts_total", "lock requests whose wait ran out");
    describe_counter!("lockd_deadlocks_total", "lock requests refused because waiting would close a cycle");
    describe_counter!(DISCONNECT_RELEASED, "locks released because their connection closed or died");
    describe_counter!(CONNECTIONS_OPENED, "clients admitted since start");
    describe_counter!(REFUSED, "connections refused, by reason: not_allowed (--allow), too_many_clients (--max-clients)");
    describe_counter!(AUTH_FAILURES, "failed authentication attempts");
    describe_histogram!(REQUEST_SECONDS, Unit::Seconds, "time lockd took to handle a request, by command (a lock's wait is not included)");
}

/// Serves `GET /metrics` on `listener` until `shutdown`, one request per connection and
/// [`MAX_SCRAPERS`] connections at once, and keeps the histograms bounded.
pub async fn serve(listener: TcpListener, shared: Arc<State>, shutdown: CancellationToken) {
    let Some(telemetry) = shared.telemetry() else { return };
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving metrics at /metrics");
    }
    let scrapers = Arc::new(Semaphore::new(MAX_SCRAPERS));
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = upkeep.tick() => {
                telemetry.handle.run_upkeep();
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = scrapers.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: closing a connection over the limit of {MAX_SCRAPERS} scrapers");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request| answer(&shared, request));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "metrics: connection failed");
            }
            drop(permit);
        });
    }
}

async fn answer(shared: &State, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status, content_type, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
        Ok(response)
    };
    match (request.method(), request.uri().path(), shared.telemetry()) {
        (&Method::GET, "/metrics", Some(telemetry)) => reply(StatusCode::OK, "text/plain; version=0.0.4", telemetry.render(shared)),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "lockd serves GET /metrics here\n".into()),
    }
}

/// Counts a connection refused before it was served; `reason` is the label value.
pub fn count_refused(reason: &'static str) {
    counter!(REFUSED, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_timed_under_its_own_name_and_others_as_other() {
        assert_eq!(TIMED_COMMANDS[timed_as(Some("lock"))], "lock");
        assert_eq!(TIMED_COMMANDS[timed_as(Some("made_up_by_a_client"))], "other");
        assert_eq!(TIMED_COMMANDS[timed_as(Some("other"))], "other");
        assert_eq!(TIMED_COMMANDS[timed_as(None)], "other");
    }
}
