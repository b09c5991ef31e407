//! The command line: the Go httptp's flags, names and defaults kept, parsed by clap.
//!
//! Go's `flag` package takes `-name value`, `-name=value` and `--name value`; clap takes the
//! double-dash forms. [`normalize`] rewrites a single-dash spelling of a known long flag to the
//! double-dash one before clap sees it, so every spelling works and clap does the parsing, the
//! help and the errors.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};

/// The teleport reverse proxy, load balancer and protocol bridge.
///
/// Accepts HTTP (HTTP/1.1 and HTTP/2), HTTPS, HTTP over a unix socket, or teleport connections,
/// and forwards each request to the least loaded `-out` address over any of the same. Run one on
/// each side of a slow link: `clients -> httptp -inType http -outType teleport ==link==> httptp
/// -inType teleport -outType http -> backends`. Flags take Go's spellings (`-in x`, `-in=x`) and
/// `--in x`.
#[derive(Debug, Parser)]
#[command(
    name = "httptp",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) proxy: ProxyFlags,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// In one process on loopback: an upstream serving JSON API responses, both proxy sides
    /// (http -> teleport -> http) and a load generator; prints what crossed the link.
    Demo(DemoFlags),
}

/// The proxy's flags (the Go httptp's, plus TLS client auth, drain and log format).
#[derive(Debug, Args)]
pub(crate) struct ProxyFlags {
    /// Address to listen on for -inType requests (a socket path for unix).
    #[arg(long = "in", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub(crate) r#in: String,
    /// What -in accepts: http (HTTP/1.1 and h2c), https (HTTP/1.1 and h2 by ALPN), unix (HTTP
    /// over a unix socket), teleport, teleports (teleport over TLS).
    #[arg(
        long = "inType",
        alias = "in-type",
        default_value = "http",
        value_name = "TYPE"
    )]
    pub(crate) in_type: String,
    /// Compression of the responses sent back on a teleport -in: none, flate, snappy, zstd.
    #[arg(long = "inCompress", alias = "in-compress", default_value = "flate")]
    pub(crate) in_compress: String,
    /// How long a teleport -in may hold responses to batch them (Go duration: 0, 500us, 2ms; the
    /// timer ticks in milliseconds, so under 1 ms holds them up to about 1 ms).
    #[arg(long = "inDelay", alias = "in-delay", default_value = "0", value_parser = parse_duration)]
    pub(crate) in_delay: Duration,
    /// The largest request header block accepted, in bytes (431 above it).
    #[arg(
        long = "inMaxHeaderSize",
        alias = "in-max-header-size",
        default_value_t = 4096
    )]
    pub(crate) in_max_header_size: u32,
    /// The largest request body accepted, in bytes (413 above it).
    #[arg(long = "inMaxBodySize", alias = "in-max-body-size", default_value_t = 4 << 20)]
    pub(crate) in_max_body_size: u32,
    /// Comma-separated IP addresses and CIDR blocks (IPv4 and IPv6) allowed to connect to -in;
    /// empty allows all. Others are disconnected at accept.
    #[arg(long = "inAllowIP", alias = "in-allow-ip", default_value = "")]
    pub(crate) in_allow_ip: String,
    /// TLS certificate chain (PEM) for -inType https or teleports.
    #[arg(
        long = "inTLSCert",
        alias = "in-tls-cert",
        default_value = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
    )]
    pub(crate) in_tls_cert: PathBuf,
    /// TLS private key (PEM) for -inType https or teleports.
    #[arg(
        long = "inTLSKey",
        alias = "in-tls-key",
        default_value = "/etc/ssl/private/ssl-cert-snakeoil.key"
    )]
    pub(crate) in_tls_key: PathBuf,
    /// CA certificates (PEM): when set, https/teleports peers must present a client
    /// certificate signed by one of them (mutual TLS).
    #[arg(long = "inTLSClientCA", alias = "in-tls-client-ca")]
    pub(crate) in_tls_client_ca: Option<PathBuf>,
    /// A secret (at least 32 bytes, random) for TLS session tickets on -inType https or
    /// teleports: httptp processes given the same one resume each other's sessions (its
    /// SHA-256 seals the tickets). Empty: each process resumes only its own sessions. A flag's
    /// value shows in the process list: prefer -inTLSSessionTicketKeyFile.
    #[arg(
        long = "inTLSSessionTicketKey",
        alias = "in-tls-session-ticket-key",
        default_value = ""
    )]
    pub(crate) in_tls_session_ticket_key: String,
    /// -inTLSSessionTicketKey read from this file (its bytes, a final newline dropped).
    #[arg(
        long = "inTLSSessionTicketKeyFile",
        alias = "in-tls-session-ticket-key-file",
        conflicts_with = "in_tls_session_ticket_key"
    )]
    pub(crate) in_tls_session_ticket_key_file: Option<PathBuf>,
    /// Accept only GET requests (405 for others).
    #[arg(long = "inGetOnly", alias = "in-get-only", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub(crate) in_get_only: bool,
    /// Closes an -in connection that has been idle this long (Go duration; 0: never). http,
    /// https and unix: no request in flight (HTTP/2 gets a goaway); teleport and teleports: no
    /// bytes moved (clients ping every 30 s). Must exceed -outTimeout, so no connection with a
    /// request waiting on -out is closed. Also the longest reading a request body may take
    /// (then 408), and how long a client that reads nothing of its response keeps an idle
    /// connection.
    /// Default: 120s, or -outTimeout + 10s if longer.
    #[arg(long = "inIdleTimeout", alias = "in-idle-timeout", value_parser = parse_duration)]
    pub(crate) in_idle_timeout: Option<Duration>,
    /// Set SO_REUSEPORT on -in, so several httptp processes can share the port.
    #[arg(long = "reusePort", alias = "reuse-port", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub(crate) reuse_port: bool,

    /// Comma-separated -outType addresses; each request goes to the least loaded one.
    #[arg(long = "out", default_value = "127.0.0.1:8043", value_name = "ADDRS")]
    pub(crate) out: String,
    /// What -out speaks: http, https, unix, teleport, teleports.
    #[arg(
        long = "outType",
        alias = "out-type",
        default_value = "teleport",
        value_name = "TYPE"
    )]
    pub(crate) out_type: String,
    /// Compression of the requests sent on a teleport -out: none, flate, snappy, zstd.
    #[arg(long = "outCompress", alias = "out-compress", default_value = "flate")]
    pub(crate) out_compress: String,
    /// zstd level of what this proxy compresses on a teleport side (responses on a teleport -in,
    /// requests on a teleport -out): -7 (fastest) to 19 (smallest); 1 compresses API traffic in
    /// about two thirds of 3's time, for about 6 % more bytes.
    #[arg(long = "zstdLevel", alias = "zstd-level", default_value_t = 3,
          allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-7..=19))]
    pub(crate) zstd_level: i32,
    /// flate level of the same: 1 (fastest) to 9. The default, 7, is the first that matches
    /// lazily as zlib and the Go original's default do; 6 put about 6 % more bytes on the
    /// proxy-chain benchmark's link for about 6 % less proxy CPU.
    #[arg(long = "flateLevel", alias = "flate-level", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..=9))]
    pub(crate) flate_level: u32,
    /// How long a teleport -out may hold requests to batch them (Go duration; millisecond ticks,
    /// as -inDelay).
    #[arg(long = "outDelay", alias = "out-delay", default_value = "0", value_parser = parse_duration)]
    pub(crate) out_delay: Duration,
    /// The largest response header block accepted from -out, in bytes; a larger one fails its
    /// request with 502.
    #[arg(
        long = "outMaxHeaderSize",
        alias = "out-max-header-size",
        default_value_t = 4096
    )]
    pub(crate) out_max_header_size: u32,
    /// The largest response body accepted from -out, in bytes; a larger one fails its request
    /// with 502.
    #[arg(long = "outMaxBodySize", alias = "out-max-body-size", default_value_t = 16 << 20)]
    pub(crate) out_max_body_size: u32,
    /// How long to wait for -out's response (504 after it).
    #[arg(long = "outTimeout", alias = "out-timeout", default_value = "3s", value_parser = parse_duration)]
    pub(crate) out_timeout: Duration,
    /// Connections per -out address for teleport out-types (more spreads compression over
    /// cores).
    #[arg(
        long = "outConnsPerAddr",
        alias = "out-conns-per-addr",
        default_value_t = 1
    )]
    pub(crate) out_conns_per_addr: usize,
    /// CA certificates (PEM) trusted for https/teleports -out; default: the system's roots.
    #[arg(long = "outTLSCA", alias = "out-tls-ca")]
    pub(crate) out_tls_ca: Option<PathBuf>,
    /// The name -out's certificate must carry; default: the host part of each -out address.
    #[arg(long = "outTLSServerName", alias = "out-tls-server-name")]
    pub(crate) out_tls_server_name: Option<String>,
    /// Client certificate chain (PEM) presented to https/teleports -out (mutual TLS).
    #[arg(long = "outTLSCert", alias = "out-tls-cert", requires = "out_tls_key")]
    pub(crate) out_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of -outTLSCert.
    #[arg(long = "outTLSKey", alias = "out-tls-key", requires = "out_tls_cert")]
    pub(crate) out_tls_key: Option<PathBuf>,

    /// The most requests in flight; more get 503. Also sizes the per-address pools.
    #[arg(long = "concurrency", default_value_t = 100_000)]
    pub(crate) concurrency: usize,
    /// Request header that carries the client's IP to -out (X-Forwarded-For, say); the IP is
    /// appended to a value already there. Empty: off.
    #[arg(
        long = "clientIPHeader",
        alias = "client-ip-header",
        default_value = ""
    )]
    pub(crate) client_ip_header: String,
    /// Address serving Prometheus metrics at /metrics and a health check at /healthz; empty
    /// disables.
    #[arg(
        long = "expvarAddr",
        alias = "expvar-addr",
        default_value = "localhost:8040"
    )]
    pub(crate) expvar_addr: String,
    /// Log every failed request (by default only the first of each kind per second).
    #[arg(long = "logAllErrors", alias = "log-all-errors", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub(crate) log_all_errors: bool,
    /// On SIGTERM/SIGINT: how long in-flight requests get to finish before connections are
    /// closed.
    #[arg(long = "drainTimeout", alias = "drain-timeout", default_value = "10s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// Runtime worker threads; 0 means one per core, 1 runs everything on one thread (no
    /// cross-thread wakeups: best when the proxy shares a small machine with its neighbours).
    #[arg(long = "workers", default_value_t = 0)]
    pub(crate) workers: usize,
    /// Log format on stderr: text or json.
    #[arg(long = "logFormat", alias = "log-format", default_value = "text", value_parser = ["text", "json"])]
    pub(crate) log_format: String,
}

/// `httptp demo`'s flags.
#[derive(Debug, Args)]
pub(crate) struct DemoFlags {
    /// How long the load runs (Go duration).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Requests in flight at once (one HTTP/1.1 keep-alive connection each).
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// Compression on the teleport link: none, flate, snappy, zstd.
    #[arg(long, default_value = "zstd")]
    pub(crate) compress: String,
    /// Replay the responses of a recorded corpus (`benches/fetch_corpus.py`'s corpus.json)
    /// instead of the built-in generated API responses.
    #[arg(long)]
    pub(crate) corpus: Option<PathBuf>,
}

/// Rewrites `-name` and `-name=value` to `--name`/`--name=value` for every long flag (and
/// alias) the command knows, so Go's spellings reach clap. Anything else, values included, is
/// left alone, and nothing after `--` is touched.
pub(crate) fn normalize(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let command = Cli::command();
    // Every long name, and whether it takes a separate value (`-in ADDR`, not `-reusePort`).
    let mut longs: Vec<(String, bool)> = Vec::new();
    let mut collect = |cmd: &clap::Command| {
        for arg in cmd.get_arguments() {
            let takes_value = arg.get_action().takes_values() && !arg.is_require_equals_set();
            let names = arg
                .get_long()
                .into_iter()
                .chain(arg.get_all_aliases().into_iter().flatten());
            longs.extend(names.map(|name| (name.to_owned(), takes_value)));
        }
    };
    collect(&command);
    for sub in command.get_subcommands() {
        collect(sub);
    }
    let known = |name: &str| longs.iter().find(|(long, _)| long == name).map(|&(_, v)| v);
    let mut out = Vec::new();
    let mut rest = false;
    let mut value_next = false;
    for arg in args {
        let text = arg.to_str().unwrap_or_default();
        if rest || std::mem::take(&mut value_next) {
            out.push(arg);
            continue;
        }
        if text == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        let dashes = if text.starts_with("--") {
            2
        } else {
            usize::from(text.starts_with('-'))
        };
        let (name, inline_value) = match text[dashes.min(text.len())..].split_once('=') {
            Some((name, _)) => (name, true),
            None => (&text[dashes.min(text.len())..], false),
        };
        match (dashes, known(name)) {
            (1 | 2, Some(takes_value)) => {
                value_next = takes_value && !inline_value;
                out.push(if dashes == 1 {
                    format!("-{text}").into()
                } else {
                    arg
                });
            }
            _ => out.push(arg),
        }
    }
    out
}

/// Parses a boolean as Go's `strconv.ParseBool` does: 1, t, T, TRUE, true, True, and 0, f, F,
/// FALSE, false, False.
pub(crate) fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (true, false, 1, 0, t, f)")),
    }
}

/// Parses a duration as Go's `time.ParseDuration` does: `0`, or a sequence of decimal numbers
/// with units (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`): `300ms`, `1.5s`, `1h2m`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (examples: 0, 500us, 3ms, 1.5s, 2m)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            // Go takes both micro signs: U+00B5 and U+03BC.
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * nanos_per_unit;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let argv = std::iter::once("httptp")
            .chain(args.iter().copied())
            .map(OsString::from);
        Cli::try_parse_from(normalize(argv))
    }

    #[test]
    fn defaults_are_the_go_httptp_ones() {
        let cli = parse(&[]).unwrap();
        let p = cli.proxy;
        assert_eq!(p.r#in, "127.0.0.1:8080");
        assert_eq!(p.in_type, "http");
        assert_eq!(p.in_compress, "flate");
        assert_eq!(p.in_max_header_size, 4096);
        assert_eq!(p.in_max_body_size, 4 << 20);
        assert_eq!(p.out, "127.0.0.1:8043");
        assert_eq!(p.out_type, "teleport");
        assert_eq!(p.out_timeout, Duration::from_secs(3));
        assert_eq!(p.out_conns_per_addr, 1);
        assert_eq!(p.concurrency, 100_000);
        assert_eq!(p.expvar_addr, "localhost:8040");
        assert!(!p.reuse_port && !p.log_all_errors && !p.in_get_only);
        assert_eq!((p.zstd_level, p.flate_level), (3, 7));
    }

    #[test]
    fn compression_levels_take_negative_zstd_levels_and_refuse_out_of_range_ones() {
        let p = parse(&["-zstdLevel", "-3", "--flate-level=1"])
            .unwrap()
            .proxy;
        assert_eq!((p.zstd_level, p.flate_level), (-3, 1));
        for bad in [
            &["-zstdLevel", "20"][..],
            &["-zstdLevel=-8"],
            &["-flateLevel", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_spelling_of_a_flag_is_accepted() {
        for args in [
            &["-inType", "unix"][..],
            &["-inType=unix"],
            &["--inType", "unix"],
            &["--inType=unix"],
            &["--in-type", "unix"],
            &["-in-type=unix"],
        ] {
            assert_eq!(parse(args).unwrap().proxy.in_type, "unix", "{args:?}");
        }
        let p = parse(&["-in=[::1]:9", "--out", "a:1,b:2", "-outDelay", "1.5ms"])
            .unwrap()
            .proxy;
        assert_eq!(p.r#in, "[::1]:9");
        assert_eq!(p.out, "a:1,b:2");
        assert_eq!(p.out_delay, Duration::from_micros(1500));
    }

    #[test]
    fn booleans_work_as_in_go() {
        assert!(parse(&["-reusePort"]).unwrap().proxy.reuse_port);
        assert!(parse(&["-reusePort=true"]).unwrap().proxy.reuse_port);
        assert!(!parse(&["-reusePort=false"]).unwrap().proxy.reuse_port);
        // `-name false` is not a boolean's value in Go either.
        assert!(parse(&["-reusePort", "false"]).is_err());
        // Every spelling of Go's strconv.ParseBool.
        for yes in ["1", "t", "T", "TRUE", "true", "True"] {
            let flag = format!("-logAllErrors={yes}");
            assert!(parse(&[&flag]).unwrap().proxy.log_all_errors, "{yes}");
        }
        for no in ["0", "f", "F", "FALSE", "false", "False"] {
            let flag = format!("--in-get-only={no}");
            assert!(!parse(&[&flag]).unwrap().proxy.in_get_only, "{no}");
        }
        assert!(parse(&["-reusePort=yes"]).is_err());
    }

    #[test]
    fn values_are_never_rewritten() {
        let argv = ["httptp", "-clientIPHeader", "-in", "-in", "x", "--", "-out"];
        let normalized = normalize(argv.iter().map(OsString::from));
        assert_eq!(
            normalized,
            [
                "httptp",
                "--clientIPHeader",
                "-in",
                "--in",
                "x",
                "--",
                "-out"
            ]
        );
        // A boolean takes no separate value: what follows is a flag again.
        let normalized = normalize(
            ["httptp", "-reusePort", "-in", "x"]
                .iter()
                .map(OsString::from),
        );
        assert_eq!(normalized, ["httptp", "--reusePort", "--in", "x"]);
    }

    #[test]
    fn unknown_flags_and_bad_values_are_errors() {
        assert!(parse(&["-inTypo", "http"]).is_err());
        assert!(parse(&["-outTimeout", "3"]).is_err());
        assert!(parse(&["-concurrency", "many"]).is_err());
        assert!(parse(&["-logFormat", "xml"]).is_err());
        assert!(
            parse(&["-outTLSCert", "c.pem"]).is_err(),
            "needs -outTLSKey"
        );
    }

    #[test]
    fn demo_is_a_subcommand() {
        let cli = parse(&["demo", "-duration", "2s", "--compress=snappy"]).unwrap();
        match cli.command {
            Some(Command::Demo(d)) => {
                assert_eq!(d.duration, Duration::from_secs(2));
                assert_eq!(d.compress, "snappy");
            }
            None => panic!("demo not parsed"),
        }
    }

    #[test]
    fn go_durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("300ms", Duration::from_millis(300)),
            ("1.5s", Duration::from_millis(1500)),
            ("1h2m", Duration::from_secs(3720)),
            ("500us", Duration::from_micros(500)),
            ("500\u{b5}s", Duration::from_micros(500)),
            ("500\u{3bc}s", Duration::from_micros(500)),
            ("7ns", Duration::from_nanos(7)),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        for s in ["", "3", "s", "1x", "-1s", "1..2s", "ms5"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
    }
}
