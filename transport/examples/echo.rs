//! An echo server on the teleport listener: every byte comes back, or with `--shout` every line
//! comes back upper-cased. Prints `listening on ADDR` per bound address once ready; on SIGTERM or
//! SIGINT drains, prints `drained N forced M` and exits 0.
//!
//! ```text
//! cargo run --release -p teleport-transport --example echo -- --listen 127.0.0.1:7000 --shout
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use teleport_transport::listener::{
    AcceptMode, ConnContext, Listener, ListenerConfig, Stream, TlsConfig, shutdown_signal,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Echo server on the teleport listener.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (repeatable); port 0 picks a free port.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// PEM certificate chain: serve TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Close connections with no traffic for this long (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Time allowed for the TLS handshake.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    handshake_timeout: Duration,
    /// Most live connections; the excess waits in the kernel backlog.
    #[arg(long, default_value_t = 10_000)]
    max_conns: usize,
    /// Accept loops (default: one per core).
    #[arg(long)]
    loops: Option<usize>,
    /// One SO_REUSEPORT socket per accept loop.
    #[arg(long)]
    reuse_port: bool,
    /// How long a shutdown waits for connections before closing them.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    drain_timeout: Duration,
    /// Upper-case each line instead of echoing bytes.
    #[arg(long)]
    shout: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = format!("echo: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = ListenerConfig::default();
    for addr in &args.listen {
        config.listen(*addr);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let mut tls = TlsConfig::from_pem_files(cert, key)?;
        if let Some(ca) = &args.client_ca {
            tls.client_ca_pem_file(ca)?;
        }
        config.tls(Some(tls));
    }
    config
        .idle_timeout(args.idle_timeout)
        .handshake_timeout(args.handshake_timeout)
        .max_connections(args.max_conns);
    if let Some(loops) = args.loops {
        config.accept_loops(loops);
    }
    if args.reuse_port {
        config.accept_mode(AcceptMode::ReusePort);
    }

    let stop = shutdown_signal()?;
    let listener = Listener::bind(&config)?;
    let server = if args.shout {
        listener.serve(shout)?
    } else {
        listener.serve(echo)?
    };
    {
        let mut out = std::io::stdout().lock();
        for addr in server.local_addrs() {
            writeln!(out, "listening on {addr}")?;
        }
        out.flush()?;
    }
    stop.await;
    let report = server.shutdown(args.drain_timeout).await;
    println!("{report}");
    Ok(())
}

/// Echoes bytes until the peer ends its side or the server drains.
async fn echo(mut stream: Stream, cx: ConnContext) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = stream.read(&mut buf) => n?,
            () = cx.token().cancelled() => break,
        };
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
    }
    stream.shutdown().await
}

/// Answers each line upper-cased, until the peer ends its side or the server drains.
async fn shout(stream: Stream, cx: ConnContext) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = tokio::select! {
            n = stream.read_until(b'\n', &mut line) => n?,
            () = cx.token().cancelled() => break,
        };
        if n == 0 {
            break;
        }
        line.make_ascii_uppercase();
        stream.get_mut().write_all(&line).await?;
    }
    stream.get_mut().shutdown().await
}
