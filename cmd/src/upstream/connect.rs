//! The hyper connector of the http, https and unix out-types: it opens the stream to one fixed
//! `-out` address (TCP or a unix socket), counts it on the wire, and runs TLS on top for https.
//! hyper's pool keeps the connections alive between requests.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use teleport_client::BoxIo;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::counted::Counted;
use crate::metrics::SideCounters;

/// Where a connector connects.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// `HOST:PORT`.
    Tcp(String),
    /// A unix socket path.
    Unix(PathBuf),
}

/// Connects to one upstream, whatever URI hyper asks for (the pool is per upstream).
#[derive(Clone)]
pub(super) struct Connector {
    target: Arc<Target>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    counters: SideCounters,
    /// For the connect and the TLS handshake together: an upstream that drops packets fails
    /// in this time, leaving the rest of -outTimeout to another address.
    timeout: Duration,
}

impl Connector {
    pub(super) fn new(
        target: Target,
        tls: Option<(TlsConnector, ServerName<'static>)>,
        counters: SideCounters,
        timeout: Duration,
    ) -> Self {
        Connector {
            target: Arc::new(target),
            tls,
            counters,
            timeout,
        }
    }

    async fn connect(self) -> io::Result<OutIo> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.open())
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {timeout:?}"),
                ))
            })
    }

    async fn open(self) -> io::Result<OutIo> {
        let stream: BoxIo = match &*self.target {
            Target::Tcp(addr) => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                Box::new(Counted::new(tcp, self.counters))
            }
            Target::Unix(path) => Box::new(Counted::new(
                UnixStream::connect(path).await?,
                self.counters,
            )),
        };
        let stream: BoxIo = match self.tls {
            Some((connector, name)) => Box::new(connector.connect(name, stream).await?),
            None => stream,
        };
        Ok(OutIo(TokioIo::new(stream)))
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = OutIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<OutIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        Box::pin(self.clone().connect())
    }
}

/// A connection as hyper's client wants it.
pub(super) struct OutIo(TokioIo<BoxIo>);

impl Connection for OutIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for OutIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for OutIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}
