//! One task per connection: allow-list, TLS handshake (off the accept path, under a timeout), the
//! handler with its idle and lifetime timers, panic isolation, and the forced close of a drain.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::Handler;
use super::context::ConnContext;
use super::server::Shared;
use super::stats::bump;
use super::stream::{Activity, Stream};
use super::tls::TLS_HANDSHAKE_RECORD;
use crate::cancel::Cancelled;

/// Counts the connection as active until its task ends, however it ends.
struct Live {
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.shared.counters.active.fetch_sub(1, Ordering::Relaxed);
        bump(&self.shared.counters.closed);
    }
}

pub(crate) fn spawn<H: Handler>(
    tcp: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    permit: OwnedSemaphorePermit,
    shared: &Arc<Shared>,
    handler: &Arc<H>,
) {
    bump(&shared.counters.accepted);
    shared.counters.active.fetch_add(1, Ordering::Relaxed);
    let live = Live {
        shared: shared.clone(),
        _permit: permit,
    };
    let handler = handler.clone();
    let started = Instant::now();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    shared.tracker.spawn(async move {
        let shared = &live.shared;
        // Each connection watches its own child token, so polling it never contends with others.
        let forced = Cancelled::new(shared.force.child_token());
        tokio::select! {
            biased;
            () = forced => bump(&shared.counters.forced),
            () = serve(tcp, peer, local, id, started, shared, &*handler) => {}
        }
        drop(live);
    });
}

async fn serve<H: Handler>(
    tcp: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    id: u64,
    started: Instant,
    shared: &Shared,
    handler: &H,
) {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    if !shared.allows(peer) {
        bump(&shared.counters.rejected);
        tracing::debug!(conn = id, %peer, "peer outside the allow-list; closed");
        return;
    }
    // Linux hands accepted sockets the listener's TCP_NODELAY and keepalive; elsewhere set them.
    #[cfg(not(target_os = "linux"))]
    if let Err(err) = super::socket::tune_accepted(&tcp, shared.nodelay, shared.keepalive.as_ref())
    {
        tracing::debug!(conn = id, %peer, error = %err, "cannot set socket options; closed");
        return;
    }
    let local = match local.map_or_else(|| tcp.local_addr(), Ok) {
        Ok(local) => SocketAddr::new(local.ip().to_canonical(), local.port()),
        Err(err) => {
            tracing::debug!(conn = id, %peer, error = %err, "peer gone before start");
            return;
        }
    };
    let Some(stream) = establish(tcp, id, peer, shared).await else {
        return;
    };

    // Idle time counts from the end of the handshake: the handshake has its own timeout.
    let activity = shared.idle_timeout.map(|_| Activity::new(Instant::now()));
    let stream = stream
        .with_activity(activity.clone())
        .with_read_limit(shared.max_read_bytes);
    let token = shared.drain.child_token();
    let cx = ConnContext {
        id,
        peer,
        local,
        started,
        token: token.clone(),
    };
    // The call itself is inside the guarded future: a handler may panic before its first await.
    let handling = AssertUnwindSafe(async move { handler.handle(stream, cx).await }).catch_unwind();
    tokio::select! {
        result = handling => match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                bump(&shared.counters.handler_errors);
                tracing::debug!(conn = id, %peer, error = %err, "handler failed");
            }
            Err(panic) => {
                bump(&shared.counters.panics);
                let message = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("<non-string panic>");
                tracing::error!(conn = id, %peer, panic = message, "handler panicked; its connection is closed");
            }
        },
        () = idle(activity.as_deref(), shared.idle_timeout) => {
            bump(&shared.counters.idle_timeouts);
            tracing::debug!(conn = id, %peer, "idle timeout");
        }
        () = lifetime(started, shared.max_lifetime, shared.lifetime_grace, &token) => {
            bump(&shared.counters.lifetime_closes);
            tracing::debug!(conn = id, %peer, "lifetime and its grace ended");
        }
    }
}

/// Turns the socket into the handler's stream: TLS handshake (after sniffing the first byte when
/// plaintext is allowed too), all under the handshake timeout. `None` closes the connection.
async fn establish(tcp: TcpStream, id: u64, peer: SocketAddr, shared: &Shared) -> Option<Stream> {
    let Some(acceptor) = &shared.tls else {
        return Some(Stream::plain(tcp));
    };
    let handshake = async {
        if shared.tls_allows_plaintext {
            let mut first = [0u8; 1];
            let n = tcp.peek(&mut first).await?;
            if n == 0 || first[0] != TLS_HANDSHAKE_RECORD {
                return Ok(Stream::plain(tcp));
            }
        }
        acceptor.accept(tcp).await.map(Stream::tls)
    };
    match tokio::time::timeout(shared.handshake_timeout, handshake).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) if is_plaintext_refused(&err) => {
            bump(&shared.counters.rejected);
            tracing::debug!(conn = id, %peer, "plaintext peer on a TLS-only listener; closed");
            None
        }
        Ok(Err(err)) => {
            bump(&shared.counters.handshake_failures);
            tracing::debug!(conn = id, %peer, error = %err, "TLS handshake failed");
            None
        }
        Err(_) => {
            bump(&shared.counters.handshake_timeouts);
            tracing::debug!(conn = id, %peer, "TLS handshake timed out");
            None
        }
    }
}

/// rustls reports a first record that is not TLS at all as an invalid content type.
fn is_plaintext_refused(err: &std::io::Error) -> bool {
    matches!(
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
        ))
    )
}

/// Ends when no bytes moved for `timeout`; never without a timeout. Sleeps until the earliest
/// moment the connection could be idle, re-arming when bytes moved meanwhile: no polling sweep.
async fn idle(activity: Option<&Activity>, timeout: Option<Duration>) {
    let (Some(activity), Some(timeout)) = (activity, timeout) else {
        return std::future::pending().await;
    };
    loop {
        // A timeout too long to be an instant is none.
        let Some(deadline) = activity.last().checked_add(timeout) else {
            return std::future::pending().await;
        };
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Ends `grace` after the connection's lifetime, having cancelled its token at the lifetime.
async fn lifetime(
    started: Instant,
    max: Option<Duration>,
    grace: Duration,
    token: &tokio_util::sync::CancellationToken,
) {
    // No lifetime, or one too long to be an instant.
    let Some(end) = max.and_then(|max| started.checked_add(max)) else {
        return std::future::pending().await;
    };
    tokio::time::sleep_until(end).await;
    token.cancel();
    tokio::time::sleep(grace).await;
}
