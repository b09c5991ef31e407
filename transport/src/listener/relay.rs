//! Byte pumping between two streams, zero-copy where the kernel can do it.
//!
//! Between two plaintext TCP sockets on Linux the bytes move with `splice(2)` through a pipe and
//! never enter user space. Everything else (TLS on either side, other systems, a stream with a
//! read limit) falls back to [`tokio::io::copy_bidirectional`].

use std::io;

use tokio::net::TcpStream;

use super::stream::Stream;

/// Pumps bytes both ways until both directions reach end of stream; returns the byte counts
/// `(a to b, b to a)`. When one side ends, the other's write half is shut down, as
/// [`tokio::io::copy_bidirectional`] does.
pub async fn relay(a: &mut Stream, b: &mut Stream) -> io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    if let (Some(pa), Some(pb)) = (a.plain_parts(), b.plain_parts())
        && !pa.read_limited
        && !pb.read_limited
    {
        let touch = || {
            pa.activity.inspect(|a| a.touch());
            pb.activity.inspect(|b| b.touch());
        };
        return splice::bidirectional(pa.tcp, pb.tcp, &touch).await;
    }
    tokio::io::copy_bidirectional(a, b).await
}

/// [`relay`] between two plain TCP sockets, for callers that hold `TcpStream`s.
pub async fn relay_tcp(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    {
        splice::bidirectional(a, b, &|| {}).await
    }
    #[cfg(not(target_os = "linux"))]
    {
        tokio::io::copy_bidirectional(a, b).await
    }
}

impl From<TcpStream> for Stream {
    /// A plaintext stream, for relaying to a socket this process connected itself.
    fn from(tcp: TcpStream) -> Self {
        Stream::plain(tcp)
    }
}

#[cfg(target_os = "linux")]
mod splice {
    use std::io;
    use std::net::Shutdown;

    use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
    use socket2::SockRef;
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// Bytes moved per `splice` call: the default pipe capacity, so one call fills the pipe.
    const CHUNK: usize = 64 * 1024;

    pub(super) async fn bidirectional(
        a: &TcpStream,
        b: &TcpStream,
        touch: &(dyn Fn() + Sync),
    ) -> io::Result<(u64, u64)> {
        tokio::try_join!(one_way(a, b, touch), one_way(b, a, touch))
    }

    /// Moves `from`'s bytes to `to` through a pipe until `from` ends, then shuts `to`'s write half.
    async fn one_way(
        from: &TcpStream,
        to: &TcpStream,
        touch: &(dyn Fn() + Sync),
    ) -> io::Result<u64> {
        let (pipe_out, pipe_in) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
        let mut total = 0u64;
        loop {
            // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
            from.readable().await?;
            let moved = from.try_io(Interest::READABLE, || {
                splice(from, None, &pipe_in, None, CHUNK, flags).map_err(io::Error::from)
            });
            let mut left = match moved {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            };
            total += left as u64;
            while left > 0 {
                to.writable().await?;
                let sent = to.try_io(Interest::WRITABLE, || {
                    splice(&pipe_out, None, to, None, left, flags).map_err(io::Error::from)
                });
                match sent {
                    Ok(n) => left -= n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err),
                }
            }
            touch();
        }
        match SockRef::from(to).shutdown(Shutdown::Write) {
            Err(err) if err.kind() != io::ErrorKind::NotConnected => Err(err),
            _ => Ok(total),
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

    /// client_a <-> (a_far | relay | b_far) <-> client_b, with a payload larger than one pipe.
    #[tokio::test]
    async fn relays_both_ways_and_propagates_end_of_stream() {
        let (mut client_a, a_far) = pair().await;
        let (mut client_b, b_far) = pair().await;
        let relay = tokio::spawn(async move {
            let (mut a, mut b) = (Stream::from(a_far), Stream::from(b_far));
            relay(&mut a, &mut b).await
        });
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client_a.write_all(&sent).await.unwrap();
            client_a.shutdown().await.unwrap();
            let mut back = Vec::new();
            client_a.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        client_b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        client_b.write_all(b"reply").await.unwrap();
        client_b.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply");
        assert_eq!(relay.await.unwrap().unwrap(), (1_000_000, 5));
    }
}
