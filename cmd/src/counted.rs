//! A stream wrapper that counts the bytes read and written, and the open connection, into a
//! side's metrics. On the out-side it sits directly on the socket (under TLS), so it counts
//! what the wire carries; on the in-side the listener has ended TLS before the proxy gets the
//! stream, so an https or teleports in-side counts the bytes inside TLS (its records' overhead,
//! a few dozen bytes each, is not counted).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::SideCounters;

/// `io`, counted into `counters` for as long as it lives.
#[derive(Debug)]
pub(crate) struct Counted<IO> {
    io: IO,
    counters: SideCounters,
    /// This connection's own count of bytes written, once asked for.
    written: Option<Arc<AtomicU64>>,
}

impl<IO> Counted<IO> {
    pub(crate) fn new(io: IO, counters: SideCounters) -> Self {
        counters.connections.inc();
        Counted {
            io,
            counters,
            written: None,
        }
    }

    /// Also counts the bytes written into a counter of this connection's own: a client
    /// reading a response slowly is told from one that does not read it.
    pub(crate) fn track_writes(&mut self) -> Arc<AtomicU64> {
        self.written.get_or_insert_with(Default::default).clone()
    }

    fn wrote(&self, n: usize) {
        self.counters.sent.inc_by(n as u64);
        if let Some(written) = &self.written {
            written.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl<IO> Drop for Counted<IO> {
    fn drop(&mut self) {
        self.counters.connections.dec();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.counters.received.inc_by(read as u64);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn counts_both_directions_and_the_connection() {
        let counters = SideCounters::default();
        let (a, mut b) = tokio::io::duplex(64);
        let mut counted = Counted::new(a, counters.clone());
        assert_eq!(counters.connections.get(), 1);
        counted.write_all(b"hello").await.unwrap();
        b.write_all(b"hi there").await.unwrap();
        let mut buf = [0u8; 8];
        counted.read_exact(&mut buf).await.unwrap();
        assert_eq!((counters.received.get(), counters.sent.get()), (8, 5));
        let written = counted.track_writes();
        counted.write_all(b"more").await.unwrap();
        assert_eq!(written.load(Ordering::Relaxed), 4);
        assert_eq!(counters.sent.get(), 9);
        drop(counted);
        assert_eq!(counters.connections.get(), 0);
    }
}
