//! The `lockd` binary: reads its settings (flags, environment, `--config` file), sets up
//! logging, refuses a setup that exposes the server without authentication, serves until
//! SIGTERM or SIGINT, then closes every connection and exits 0. SIGHUP re-reads the
//! settings and applies those that can change without closing a connection.

use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::parser::ValueSource;
use lockd::config::LogFormat;
use lockd::config_file::{LoadError, Settings};
use lockd::server::Reloadable;
use lockd::{Config, Server};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

/// Settings SIGHUP applies; every other change waits for a restart.
const RELOADABLE: &[&str] = &["allow", "log-level", "tls-cert", "tls-key"];

type LogFilter = reload::Handle<EnvFilter, Registry>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error followed by each cause it does not already quote (most of our messages quote
/// theirs, which anyhow's report would print again under "Caused by"), on one line unless
/// a message has several (a TOML error shows the line it points at).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1).map(ToString::to_string) {
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

fn run() -> anyhow::Result<()> {
    let settings = match Settings::load(std::env::args_os()) {
        Err(LoadError::Flags(e)) => e.exit(),
        loaded => loaded?,
    };
    let config = &settings.config;
    if config.check_config {
        lockd::server::validate(config)?;
        log_filter(config)?;
        print!("{}", settings.to_toml());
        return Ok(());
    }
    let log = init_logging(config)?;
    if settings.source("auth_key") == Some(ValueSource::CommandLine) {
        tracing::warn!("--auth-key is visible to every local user in the process list; use --auth-key-file or LOCKD_AUTH_KEY");
    }
    if let Some(path) = settings.raw("auth_key_file") {
        warn_if_others_can_read(Path::new(&path));
    }
    config.check_exposure()?;
    if config.insecure_no_auth && config.auth_key().is_none() {
        tracing::warn!("--insecure-no-auth: anyone who can reach the listening addresses can take and release locks");
    }
    let open_files = lockd::server::fit_open_file_limit(config)?;
    tracing::debug!(open_files, "open-file limit");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // Named, so that `top -H` and `ps -L` show which threads are the server's.
    runtime.thread_name("lockd-worker");
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads.into());
    }
    let runtime = runtime.enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        let server = Server::bind(settings.config.clone()).await?;
        let shutdown = CancellationToken::new();
        let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
            }
            trigger.cancel();
        });
        let reloadable = server.reloadable();
        tokio::spawn(async move {
            let started = settings;
            while hangup.recv().await.is_some() {
                reload(&started, &reloadable, &log);
            }
        });
        server.run(shutdown).await;
        anyhow::Ok(())
    })
}

/// SIGHUP: re-reads the flags, environment and file, and applies the allow-list, the log
/// level and the TLS certificate and key to new connections. Invalid settings change
/// nothing. Other changes are logged as needing a restart.
fn reload(started: &Settings, reloadable: &Arc<Reloadable>, log: &LogFilter) {
    let prepared = Settings::load(std::env::args_os()).map_err(anyhow::Error::from).and_then(|new| {
        let tls = lockd::server::validate(&new.config)?;
        let filter = log_filter(&new.config)?;
        anyhow::Ok((new, tls, filter))
    });
    let (new, tls, filter) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            tracing::error!(error = %one_line(&e), "SIGHUP: invalid settings; keeping the current ones");
            return;
        }
    };
    let changed = new.changed(started);
    let needs_restart: Vec<&str> = changed.iter().map(String::as_str).filter(|name| !RELOADABLE.contains(name)).collect();
    let mut reloaded = vec!["allow-list", "log level"];
    reloadable.set_allow(new.config.allow.clone());
    match tls {
        Some(acceptor) => match reloadable.set_tls(acceptor) {
            true => reloaded.push("TLS certificate and key"),
            false => tracing::warn!("SIGHUP: TLS was turned on, which needs a restart (clients of the plain listeners expect plain)"),
        },
        None if started.config.tls.tls_cert.is_some() => tracing::warn!("SIGHUP: TLS was turned off, which needs a restart; still serving TLS with the old certificate"),
        None => {}
    }
    tracing::info!(
        reloaded = %reloaded.join(", "),
        allow = %new.config.allow.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        log_level = %new.config.log_level,
        needs_restart = %if needs_restart.is_empty() { "nothing".to_owned() } else { needs_restart.join(", ") },
        "SIGHUP: settings reloaded"
    );
    // Last, so that the line above is written even when the new level hides info lines.
    if let Err(e) = log.reload(filter) {
        tracing::error!(error = %e, "SIGHUP: cannot change the log level");
    }
}

/// A key file other users can read is a key they have. Only a warning: secret mounts
/// (Kubernetes, Docker) are often 0644 inside a container nobody else uses.
fn warn_if_others_can_read(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "other users can read the auth key file; chmod 0600 it");
        }
    }
}

/// `--log-level`, unless RUST_LOG overrides it.
fn log_filter(config: &Config) -> anyhow::Result<EnvFilter> {
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(&config.log_level),
    }
    .context("bad --log-level or RUST_LOG")
}

/// Logs to stderr, in colour only when it is a terminal (a file or journald gets no
/// escape codes). Returns the handle SIGHUP changes the level through.
fn init_logging(config: &Config) -> anyhow::Result<LogFilter> {
    let (filter, handle) = reload::Layer::new(log_filter(config)?);
    let lines = fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let lines = match config.log_format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    tracing_subscriber::registry().with(filter).with(lines).init();
    Ok(handle)
}
