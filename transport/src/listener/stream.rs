//! The byte stream a handler gets: plaintext TCP or TLS over TCP, which records when bytes last
//! moved (for the idle timer) and enforces the read limit.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

/// A read went past [`ListenerConfig::max_read_bytes`](crate::listener::ListenerConfig::max_read_bytes).
/// It is the inner error of the `io::Error` (kind `InvalidData`) that the read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("read limit of {limit} bytes exceeded")]
pub struct ReadLimitExceeded {
    /// The configured limit.
    pub limit: u64,
}

/// When bytes last moved on a connection, shared by its stream and its idle timer. Stored as
/// nanoseconds since the connection started, so one relaxed atomic store marks activity.
#[derive(Debug)]
pub(crate) struct Activity {
    origin: Instant,
    last: AtomicU64,
}

impl Activity {
    pub(crate) fn new(origin: Instant) -> Arc<Self> {
        Arc::new(Activity {
            origin,
            last: AtomicU64::new(0),
        })
    }

    pub(crate) fn touch(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn last(&self) -> Instant {
        self.origin + std::time::Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// A plaintext stream's socket and bookkeeping, for the zero-copy relay.
pub(crate) struct PlainParts<'a> {
    pub(crate) tcp: &'a TcpStream,
    pub(crate) activity: Option<&'a Activity>,
    pub(crate) read_limited: bool,
}

#[derive(Debug)]
enum Inner {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection's byte stream: [`AsyncRead`] + [`AsyncWrite`], plaintext or TLS.
#[derive(Debug)]
pub struct Stream {
    inner: Inner,
    activity: Option<Arc<Activity>>,
    read_left: Option<u64>,
    read_limit: u64,
}

// ===== impl Stream =====

impl Stream {
    pub(crate) fn plain(tcp: TcpStream) -> Self {
        Stream {
            inner: Inner::Plain(tcp),
            activity: None,
            read_left: None,
            read_limit: 0,
        }
    }

    pub(crate) fn tls(tls: TlsStream<TcpStream>) -> Self {
        Stream {
            inner: Inner::Tls(Box::new(tls)),
            activity: None,
            read_left: None,
            read_limit: 0,
        }
    }

    pub(crate) fn with_activity(mut self, activity: Option<Arc<Activity>>) -> Self {
        self.activity = activity;
        self
    }

    pub(crate) fn with_read_limit(mut self, limit: Option<u64>) -> Self {
        self.read_left = limit;
        self.read_limit = limit.unwrap_or(0);
        self
    }

    /// Whether the peer speaks TLS on this connection.
    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    /// The TLS session (negotiated ALPN protocol, peer certificates, ...), when there is one.
    pub fn tls_session(&self) -> Option<&rustls::ServerConnection> {
        match &self.inner {
            Inner::Plain(_) => None,
            Inner::Tls(tls) => Some(tls.get_ref().1),
        }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Inner::Plain(tcp) => tcp,
            Inner::Tls(tls) => tls.get_ref().0,
        }
    }

    /// The plaintext TCP socket with the bookkeeping a zero-copy pump must keep: `None` for TLS.
    pub(crate) fn plain_parts(&self) -> Option<PlainParts<'_>> {
        match &self.inner {
            Inner::Plain(tcp) => Some(PlainParts {
                tcp,
                activity: self.activity.as_deref(),
                read_limited: self.read_left.is_some(),
            }),
            Inner::Tls(_) => None,
        }
    }

    pub(crate) fn read_limit_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            ReadLimitExceeded {
                limit: self.read_limit,
            },
        )
    }

    fn touch(&self) {
        if let Some(activity) = &self.activity {
            activity.touch();
        }
    }

    fn poll_read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match this.read_left {
            None => ready!(this.poll_read_inner(cx, buf))?,
            Some(0) if buf.remaining() > 0 => {
                // Past the limit a read may only report the end of the stream.
                let mut probe = [0u8; 1];
                let mut probe = ReadBuf::new(&mut probe);
                ready!(this.poll_read_inner(cx, &mut probe))?;
                if !probe.filled().is_empty() {
                    return Poll::Ready(Err(this.read_limit_error()));
                }
            }
            Some(left) if (buf.remaining() as u64) > left => {
                // Never hand over more than the limit: read into just the first `left` bytes.
                let mut limited = ReadBuf::new(buf.initialize_unfilled_to(left as usize));
                ready!(this.poll_read_inner(cx, &mut limited))?;
                let n = limited.filled().len();
                buf.advance(n);
            }
            Some(_) => ready!(this.poll_read_inner(cx, buf))?,
        }
        let n = buf.filled().len() - before;
        if n > 0 {
            this.touch();
            if let Some(left) = &mut this.read_left {
                *left -= n as u64;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(match &mut this.inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        })?;
        if n > 0 {
            this.touch();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(match &mut this.inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        })?;
        if n > 0 {
            this.touch();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Plain(tcp) => tcp.is_write_vectored(),
            Inner::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn read_limit_yields_exactly_the_limit_then_a_typed_error() {
        let (mut client, server) = pair().await;
        let mut stream = Stream::plain(server).with_read_limit(Some(10));
        client.write_all(&[7u8; 25]).await.unwrap();
        let mut got = Vec::new();
        let err = loop {
            let mut buf = [0u8; 64];
            match stream.read(&mut buf).await {
                Ok(0) => panic!("unexpected end of stream"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(got, vec![7u8; 10]);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<ReadLimitExceeded>());
        assert_eq!(inner, Some(&ReadLimitExceeded { limit: 10 }));
    }

    #[tokio::test]
    async fn end_of_stream_at_the_limit_is_not_an_error() {
        let (mut client, server) = pair().await;
        let mut stream = Stream::plain(server).with_read_limit(Some(4));
        client.write_all(b"abcd").await.unwrap();
        client.shutdown().await.unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abcd");
    }

    #[tokio::test]
    async fn reads_and_writes_mark_activity() {
        let (mut client, server) = pair().await;
        let activity = Activity::new(Instant::now());
        let mut stream = Stream::plain(server).with_activity(Some(activity.clone()));
        let start = activity.last();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        stream.write_all(b"x").await.unwrap();
        let after_write = activity.last();
        assert!(after_write > start);
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        client.write_all(b"y").await.unwrap();
        stream.read_exact(&mut byte).await.unwrap();
        assert!(activity.last() > after_write);
    }
}
