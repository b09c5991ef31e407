//! The proxy's settings, checked once: [`ProxyConfig::from_flags`] turns the command line into
//! typed values (kinds, codecs, CIDR blocks, TLS configs loaded from their files) or a clear
//! error naming the flag.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use http::HeaderName;
use ipnet::IpNet;
use teleport_transport::compress::{Codec, Levels};
use teleport_transport::listener::TlsConfig;

use crate::args::ProxyFlags;
use crate::tls;

/// What a side speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// HTTP/1.1 and HTTP/2 over TCP.
    Http,
    /// The same over TLS.
    Https,
    /// HTTP over a unix socket.
    Unix,
    /// The teleport protocol over TCP.
    Teleport,
    /// The teleport protocol over TLS.
    Teleports,
}

impl Kind {
    fn parse(flag: &str, value: &str) -> anyhow::Result<Self> {
        Ok(match value {
            "http" => Kind::Http,
            "https" => Kind::Https,
            "unix" => Kind::Unix,
            "teleport" => Kind::Teleport,
            "teleports" => Kind::Teleports,
            _ => bail!(
                "unknown -{flag}={value:?}; supported: http, https, unix, teleport, teleports"
            ),
        })
    }

    pub(crate) fn is_tls(self) -> bool {
        matches!(self, Kind::Https | Kind::Teleports)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Http => "http",
            Kind::Https => "https",
            Kind::Unix => "unix",
            Kind::Teleport => "teleport",
            Kind::Teleports => "teleports",
        })
    }
}

/// The proxy's validated settings.
#[derive(Debug, Clone)]
pub(crate) struct ProxyConfig {
    pub(crate) in_kind: Kind,
    /// The TCP addresses to bind (empty for unix).
    pub(crate) in_addrs: Vec<SocketAddr>,
    /// The unix socket path (unix only).
    pub(crate) in_path: Option<PathBuf>,
    pub(crate) in_codec: Codec,
    pub(crate) in_delay: Duration,
    pub(crate) in_max_header_size: u32,
    pub(crate) in_max_body_size: u32,
    pub(crate) in_allow: Vec<IpNet>,
    pub(crate) in_tls: Option<TlsConfig>,
    pub(crate) in_get_only: bool,
    /// `None`: idle -in connections stay open.
    pub(crate) in_idle_timeout: Option<Duration>,
    pub(crate) reuse_port: bool,

    pub(crate) out_kind: Kind,
    pub(crate) outs: Vec<String>,
    pub(crate) out_codec: Codec,
    pub(crate) out_delay: Duration,
    pub(crate) out_max_header_size: u32,
    pub(crate) out_max_body_size: u32,
    pub(crate) out_timeout: Duration,
    pub(crate) out_conns_per_addr: usize,
    pub(crate) out_tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) out_tls_server_name: Option<String>,
    /// Compression levels of both teleport sides.
    pub(crate) levels: Levels,

    pub(crate) concurrency: usize,
    pub(crate) client_ip_header: Option<HeaderName>,
    pub(crate) metrics_addr: Option<String>,
    pub(crate) log_all_errors: bool,
    pub(crate) drain_timeout: Duration,
}

/// -inIdleTimeout when not given (the Go httptp's read timeout), unless -outTimeout is longer.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The Go httptp's defaults, which 0 stands for there (fasthttp's "use the default").
const DEFAULT_MAX_HEADER_SIZE: u32 = 4096;
const DEFAULT_IN_MAX_BODY_SIZE: u32 = 4 << 20;

/// The session ticket secret, from its flag or its file (a final newline dropped).
fn ticket_secret(flags: &ProxyFlags) -> anyhow::Result<Vec<u8>> {
    let Some(path) = &flags.in_tls_session_ticket_key_file else {
        return Ok(flags.in_tls_session_ticket_key.as_bytes().to_vec());
    };
    let mut secret = std::fs::read(path)
        .with_context(|| format!("-inTLSSessionTicketKeyFile={}", path.display()))?;
    if secret.last() == Some(&b'\n') {
        secret.pop();
        if secret.last() == Some(&b'\r') {
            secret.pop();
        }
    }
    Ok(secret)
}

/// `value`, or `default` for 0.
fn or_default(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}

impl ProxyConfig {
    /// Checks the flags and loads the files they name.
    pub(crate) fn from_flags(flags: &ProxyFlags) -> anyhow::Result<Self> {
        let in_kind = Kind::parse("inType", &flags.in_type)?;
        let out_kind = Kind::parse("outType", &flags.out_type)?;
        let (in_addrs, in_path) = match in_kind {
            Kind::Unix => (Vec::new(), Some(PathBuf::from(&flags.r#in))),
            _ => (resolve("in", &with_host(&flags.r#in, "0.0.0.0"))?, None),
        };
        let outs: Vec<String> = flags
            .out
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|out| match out_kind {
                Kind::Unix => out.to_owned(),
                _ => with_host(out, "127.0.0.1"),
            })
            .collect();
        if outs.is_empty() {
            bail!("-out names no address");
        }
        if out_kind != Kind::Unix {
            for out in &outs {
                if out
                    .rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
                {
                    bail!("-out address {out:?} is not HOST:PORT");
                }
            }
        }
        if flags.concurrency == 0 {
            bail!("-concurrency must be at least 1");
        }
        if flags.out_conns_per_addr == 0 {
            bail!("-outConnsPerAddr must be at least 1");
        }
        if flags.out_timeout.is_zero() {
            bail!("-outTimeout must be above 0");
        }
        let in_idle_timeout = flags
            .in_idle_timeout
            .unwrap_or(DEFAULT_IDLE_TIMEOUT.max(flags.out_timeout + Duration::from_secs(10)));
        let in_idle_timeout = (!in_idle_timeout.is_zero()).then_some(in_idle_timeout);
        if let Some(idle) = in_idle_timeout
            && idle <= flags.out_timeout
        {
            bail!(
                "-inIdleTimeout={idle:?} must exceed -outTimeout={:?} (or be 0: never), so that \
                 no connection with a request waiting on -out is closed",
                flags.out_timeout
            );
        }
        let in_tls = if in_kind.is_tls() {
            let alpn: Vec<Vec<u8>> = match in_kind {
                Kind::Https => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                _ => Vec::new(),
            };
            Some(
                tls::server_config(
                    &flags.in_tls_cert,
                    &flags.in_tls_key,
                    flags.in_tls_client_ca.as_deref(),
                    &ticket_secret(flags)?,
                    alpn,
                )
                .context("-inTLSCert/-inTLSKey/-inTLSClientCA")?,
            )
        } else {
            None
        };
        let out_tls = if out_kind.is_tls() {
            let identity = flags
                .out_tls_cert
                .as_deref()
                .zip(flags.out_tls_key.as_deref());
            let alpn = match out_kind {
                Kind::Https => vec![b"http/1.1".to_vec()],
                _ => Vec::new(),
            };
            Some(
                tls::client_config(flags.out_tls_ca.as_deref(), identity, alpn)
                    .context("-outTLSCA/-outTLSCert/-outTLSKey")?,
            )
        } else {
            None
        };
        let client_ip_header = match flags.client_ip_header.as_str() {
            "" => None,
            name => Some(
                HeaderName::try_from(name)
                    .with_context(|| format!("-clientIPHeader={name:?} is not a header name"))?,
            ),
        };
        Ok(ProxyConfig {
            in_kind,
            in_addrs,
            in_path,
            in_codec: parse_codec("inCompress", &flags.in_compress)?,
            in_delay: flags.in_delay,
            in_max_header_size: or_default(flags.in_max_header_size, DEFAULT_MAX_HEADER_SIZE),
            in_max_body_size: or_default(flags.in_max_body_size, DEFAULT_IN_MAX_BODY_SIZE),
            in_allow: parse_allow(&flags.in_allow_ip)?,
            in_tls,
            in_get_only: flags.in_get_only,
            in_idle_timeout,
            reuse_port: flags.reuse_port,
            out_kind,
            outs,
            out_codec: parse_codec("outCompress", &flags.out_compress)?,
            out_delay: flags.out_delay,
            out_max_header_size: or_default(flags.out_max_header_size, DEFAULT_MAX_HEADER_SIZE),
            out_max_body_size: flags.out_max_body_size,
            out_timeout: flags.out_timeout,
            out_conns_per_addr: flags.out_conns_per_addr,
            out_tls,
            out_tls_server_name: flags.out_tls_server_name.clone(),
            levels: Levels {
                deflate: flags.flate_level,
                zstd: flags.zstd_level,
            },
            concurrency: flags.concurrency,
            client_ip_header,
            metrics_addr: (!flags.expvar_addr.is_empty())
                .then(|| with_host(&flags.expvar_addr, "0.0.0.0")),
            log_all_errors: flags.log_all_errors,
            drain_timeout: flags.drain_timeout,
        })
    }
}

/// A compression name as the Go httptp spells them (`flate`; `deflate` is accepted too), or
/// `zstd`, which the Go httptp does not have.
pub(crate) fn parse_codec(flag: &str, value: &str) -> anyhow::Result<Codec> {
    Ok(match value {
        "none" => Codec::None,
        "flate" | "deflate" => Codec::Deflate,
        "snappy" => Codec::Snappy,
        "zstd" => Codec::Zstd,
        _ => bail!("unknown -{flag}={value:?}; supported: none, flate, snappy, zstd"),
    })
}

/// `-inAllowIP`: comma-separated addresses (a host route each) and CIDR blocks, v4 and v6.
pub(crate) fn parse_allow(list: &str) -> anyhow::Result<Vec<IpNet>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "-inAllowIP entry {entry:?} is neither an IP address nor a CIDR block"
                    )
                })
        })
        .collect()
}

/// `:PORT`, Go's spelling of "every interface" to listen on (or "this host" to dial), gets
/// `host`; other addresses are kept as they are.
fn with_host(addr: &str, host: &str) -> String {
    match addr.strip_prefix(':') {
        Some(port) if !port.contains(':') => format!("{host}:{port}"),
        _ => addr.to_owned(),
    }
}

fn resolve(flag: &str, addr: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("-{flag}={addr:?} is not a HOST:PORT address"))?
        .collect();
    if addrs.is_empty() {
        bail!("-{flag}={addr:?} resolves to no address");
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_sizes_are_the_go_defaults() {
        use clap::Parser as _;
        let cli = crate::args::Cli::try_parse_from(crate::args::normalize(
            [
                "httptp",
                "-inType=http",
                "-outType=http",
                "-out=127.0.0.1:1",
                "-inMaxHeaderSize=0",
                "-inMaxBodySize=0",
                "-outMaxHeaderSize=0",
                "-inTLSSessionTicketKey=not read: the in-side is plain http",
            ]
            .map(std::ffi::OsString::from),
        ))
        .unwrap();
        let config = ProxyConfig::from_flags(&cli.proxy).unwrap();
        assert_eq!(config.in_max_header_size, 4096);
        assert_eq!(config.in_max_body_size, 4 << 20);
        assert_eq!(config.out_max_header_size, 4096);
    }

    #[test]
    fn allow_list_takes_addresses_and_blocks_of_both_families() {
        let nets = parse_allow("10.0.0.0/8, 127.0.0.1,::1/128,2001:db8::1").unwrap();
        let want: Vec<IpNet> = ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "2001:db8::1/128"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(nets, want);
        assert!(parse_allow("").unwrap().is_empty());
        let err = parse_allow("10.0.0.0/8,nonsense").unwrap_err().to_string();
        assert!(err.contains("nonsense"), "{err}");
        assert!(parse_allow("10.0.0.0/33").is_err());
    }

    #[test]
    fn a_port_alone_is_every_interface_to_listen_on_and_this_host_to_dial() {
        assert_eq!(with_host(":8080", "0.0.0.0"), "0.0.0.0:8080");
        assert_eq!(with_host("10.1.2.3:80", "0.0.0.0"), "10.1.2.3:80");
        assert_eq!(with_host("[::1]:80", "0.0.0.0"), "[::1]:80");
        assert_eq!(with_host("::1", "0.0.0.0"), "::1");
        assert_eq!(
            resolve("in", &with_host(":0", "0.0.0.0")).unwrap(),
            vec![SocketAddr::from(([0, 0, 0, 0], 0))]
        );
    }

    #[test]
    fn codecs_by_go_name() {
        assert_eq!(parse_codec("x", "flate").unwrap(), Codec::Deflate);
        assert_eq!(parse_codec("x", "snappy").unwrap(), Codec::Snappy);
        assert_eq!(parse_codec("x", "none").unwrap(), Codec::None);
        assert_eq!(parse_codec("x", "zstd").unwrap(), Codec::Zstd);
        let err = parse_codec("outCompress", "zip").unwrap_err().to_string();
        assert!(err.contains("-outCompress") && err.contains("zip"), "{err}");
    }

    #[test]
    fn kinds_by_name() {
        assert_eq!(Kind::parse("inType", "teleports").unwrap(), Kind::Teleports);
        let err = Kind::parse("inType", "ftp").unwrap_err().to_string();
        assert!(err.contains("-inType") && err.contains("ftp"), "{err}");
    }
}
