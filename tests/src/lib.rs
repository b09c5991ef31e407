//! Test support for the workspace's end-to-end tests and benches: a throwaway PKI made with rcgen
//! at test time, TLS client setups, and small servers to talk to. Nothing here reaches beyond
//! loopback.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use teleport_transport::listener::{ConnContext, Stream, TlsConfig};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate chain, leaf first.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// A CA, a server certificate for `localhost`, `127.0.0.1` and `::1`, and client certificates:
/// one signed by the CA, one by an unrelated CA.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server's identity, signed by the CA.
    pub server: Identity,
    /// A client identity signed by the CA.
    pub client: Identity,
    /// A client identity signed by another CA, which the server must refuse.
    pub stranger: Identity,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert")
}

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> Identity {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let params = CertificateParams::new(names).expect("leaf params");
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf cert");
    Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

impl Pki {
    /// Generates a fresh PKI (ECDSA P-256 keys).
    pub fn generate() -> Self {
        let ca = new_ca("teleport test CA");
        let other = new_ca("unrelated CA");
        Pki {
            ca_pem: ca.pem(),
            server: leaf(&ca, &["localhost", "127.0.0.1", "::1"]),
            client: leaf(&ca, &["client.test"]),
            stranger: leaf(&other, &["stranger.test"]),
        }
    }

    /// The listener's TLS setup with the server identity.
    pub fn server_tls(&self) -> TlsConfig {
        TlsConfig::from_pem(
            self.server.cert_pem.as_bytes(),
            self.server.key_pem.as_bytes(),
        )
        .expect("server TLS config")
    }

    /// [`server_tls`](Self::server_tls) that also requires a client certificate from the CA.
    pub fn server_mtls(&self) -> TlsConfig {
        let mut tls = self.server_tls();
        tls.client_ca_pem(self.ca_pem.as_bytes())
            .expect("client CA");
        tls
    }

    /// A client setup that trusts the CA, presents `identity` when given, and resumes sessions
    /// only when `resumption` is set.
    pub fn client_config(
        &self,
        identity: Option<&Identity>,
        resumption: bool,
    ) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA cert");
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => {
                let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client chain");
                let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("client key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client auth")
            }
        };
        if !resumption {
            config.resumption = Resumption::disabled();
        }
        Arc::new(config)
    }
}

/// Connects over TLS to `addr`, checking the server certificate for `localhost`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// A handler that echoes every byte until the peer ends its side, then ends too.
pub async fn echo(mut stream: Stream, _cx: ConnContext) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(&mut stream);
    tokio::io::copy(&mut rd, &mut wr).await?;
    wr.shutdown().await
}

/// Echoes line by line and, once the connection's token is cancelled, stops between lines the
/// way a well-behaved protocol handler drains: says `bye`, shuts its write half, then reads the
/// peer's leftovers until the peer closes (so the close is not a reset that could eat the `bye`).
pub async fn echo_lines_until_drained<S>(mut stream: S, cx: &ConnContext) -> io::Result<()>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let mut line = String::new();
    loop {
        line.clear();
        let read = tokio::select! {
            read = stream.read_line(&mut line) => read?,
            () = cx.token().cancelled() => break,
        };
        if read == 0 {
            break;
        }
        stream.write_all(line.as_bytes()).await?;
    }
    stream.write_all(b"bye\n").await?;
    stream.shutdown().await?;
    tokio::io::copy(&mut stream, &mut tokio::io::sink()).await?;
    Ok(())
}

/// Writes `msg`, flushes (TLS streams may hold a record until flushed), and reads back exactly
/// as many bytes.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &[u8],
) -> io::Result<Vec<u8>> {
    stream.write_all(msg).await?;
    stream.flush().await?;
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).await?;
    Ok(back)
}

/// Raises this process's soft descriptor limit to its hard limit, for tests that open thousands
/// of sockets. Returns the soft limit now in force.
#[cfg(unix)]
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum {
        limit.current = Some(max);
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// What a [`Hooked`] stream does around each write.
pub trait WriteHook: Send + Unpin + 'static {
    /// Before a write: `Some` answers it instead (`Pending` holds the writer up; the hook
    /// then wakes it).
    fn before(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> Option<std::task::Poll<io::Result<usize>>> {
        None
    }

    /// After a write that reached the stream.
    fn after(&mut self, _written: &std::task::Poll<io::Result<usize>>) {}
}

/// An in-memory stream with a [`WriteHook`] around its writes: a test's peer that stalls, or
/// that acts on each write.
pub struct Hooked<H> {
    /// The stream.
    pub io: tokio::io::DuplexStream,
    /// What happens around its writes.
    pub hook: H,
}

impl<H: WriteHook> AsyncRead for Hooked<H> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<H: WriteHook> AsyncWrite for Hooked<H> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        if let Some(answer) = self.hook.before(cx) {
            return answer;
        }
        let written = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.hook.after(&written);
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
