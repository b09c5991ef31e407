//! `httptp`: the teleport reverse proxy, load balancer and protocol bridge. Run one on each side
//! of a slow link: `clients --HTTP--> httptp ==teleport==> httptp --HTTP--> backends`.
//!
//! ```text
//!   in-side (inbound/)            core (proxy.rs)              out-side (upstream/)
//!   http/https/unix: hyper  --->  admission, hop-by-hop,  --->  http/https/unix: hyper pool
//!   teleport(s): teleport-server  client IP, 502/503/504       teleport(s): teleport-client
//!                 \___________ metrics.rs: /metrics, /healthz ___________/
//! ```
//!
//! `httptp demo` runs the whole picture in one process (demo.rs).

mod args;
mod config;
mod counted;
mod demo;
mod inbound;
mod metrics;
mod proxy;
mod tls;
mod upstream;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::args::{Cli, Command};
use crate::config::ProxyConfig;
use crate::inbound::Inbound;
use crate::metrics::{Metrics, Side};
use crate::proxy::Proxy;
use crate::upstream::Outbound;

/// mimalloc: a proxy allocates and frees a few buffers per request on every core; glibc's
/// allocator showed up at about 8 % of the CPU profile under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse_from(args::normalize(std::env::args_os()));
    init_logging(&cli.proxy.log_format);
    let runtime = match build_runtime(cli.proxy.workers) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("httptp: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Demo(flags)) => runtime.block_on(demo::run(flags)),
        None => {
            ProxyConfig::from_flags(&cli.proxy).and_then(|config| runtime.block_on(run(config)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("httptp: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime for `-workers`: one thread (a current-thread runtime, no cross-thread wakeups),
/// that many worker threads, or with 0 one per core.
fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        builder.worker_threads(workers);
    }
    builder.enable_all().build()
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HTTPTP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs one proxy until SIGTERM/SIGINT, then drains it.
async fn run(config: ProxyConfig) -> anyhow::Result<()> {
    let signal =
        teleport_transport::listener::shutdown_signal().context("registering for SIGTERM")?;
    let running = Running::start(&config).await?;
    let mut stdout = std::io::stdout().lock();
    for bound in running.inbound.bound() {
        writeln!(stdout, "listening {} {bound}", config.in_kind)?;
    }
    if let Some(addr) = running.metrics_addr {
        writeln!(stdout, "metrics {addr}")?;
    }
    stdout.flush()?;
    drop(stdout);
    tracing::info!(
        in_type = %config.in_kind,
        out_type = %config.out_kind,
        out = ?config.outs,
        "httptp forwarding"
    );
    signal.await;
    tracing::info!(deadline = ?config.drain_timeout, "stop signal: draining");
    let report = running.shutdown(config.drain_timeout).await;
    tracing::info!(%report, "drained");
    Ok(())
}

/// One proxy, started: its in-side, the shared core (with the out-side), and the metrics
/// server.
pub(crate) struct Running {
    pub(crate) inbound: Inbound,
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    draining: Arc<AtomicBool>,
    metrics_stop: CancellationToken,
    _timer_tick: AbortOnDropHandle<()>,
}

impl Running {
    pub(crate) async fn start(config: &ProxyConfig) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let outbound = Outbound::new(config, metrics.side(Side::Out)).context("setting up -out")?;
        let proxy = Arc::new(Proxy::new(
            outbound,
            metrics.clone(),
            config.concurrency,
            config.client_ip_header.clone(),
            config.log_all_errors,
        ));
        let draining = Arc::new(AtomicBool::new(false));
        let metrics_stop = CancellationToken::new();
        let metrics_addr = match &config.metrics_addr {
            Some(addr) => {
                let (listener, bound) = metrics::bind(addr).await?;
                tokio::spawn(metrics::serve(
                    listener,
                    metrics,
                    draining.clone(),
                    metrics_stop.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        let inbound = Inbound::start(config, proxy.clone())
            .await
            .context("starting -in")?;
        Ok(Running {
            inbound,
            proxy,
            metrics_addr,
            draining,
            metrics_stop,
            _timer_tick: AbortOnDropHandle::new(tokio::spawn(timer_tick())),
        })
    }

    /// Drains the in-side (in-flight requests finish through the out-side), then stops the
    /// metrics server.
    pub(crate) async fn shutdown(
        self,
        deadline: std::time::Duration,
    ) -> teleport_transport::listener::DrainReport {
        self.draining.store(true, Ordering::Relaxed);
        let report = self.inbound.shutdown(deadline).await;
        self.metrics_stop.cancel();
        report
    }
}

/// Keeps a deadline at most [`TIMER_TICK`] away in the runtime's timer wheel, for the proxy's
/// life.
///
/// tokio's time driver wakes the runtime's I/O driver (an eventfd `write(2)`) whenever a timer is
/// registered earlier than the earliest deadline it saw at its last park, and when it saw none,
/// for every registration until it parks again. A proxy registers timers per request (the
/// upstream timeout, the handler's deadline), so when its wheel drained between bursts it paid
/// about one wake-up syscall per request: in 3 s of the proxy-chain bench, proxy B made 8,955
/// such writes beside 9,060 upstream requests without this tick, and 107 beside 12,910 with it.
/// Deadlines after the tick's register silently; one earlier than it still wakes the driver, as
/// it must.
async fn timer_tick() {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// The period of [`timer_tick`]: shorter than per-request timeouts usually are (seconds: httptp's
/// -outTimeout defaults to 3 s), so that theirs register silently, and long enough to cost
/// nothing.
const TIMER_TICK: std::time::Duration = std::time::Duration::from_millis(500);
