//! Listening sockets: created with socket2 so that every option is set before `bind`, and every
//! refusal is reported with the option's name.

#[cfg(not(target_os = "linux"))]
use std::io;
use std::net::SocketAddr;

#[cfg(any(test, not(target_os = "linux")))]
use socket2::SockRef;
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use std::net::TcpListener;

use super::config::{AcceptMode, Keepalive, ListenerConfig};
use crate::error::Error;

/// Binds every configured address: one socket each in [`AcceptMode::Shared`], one per accept loop
/// in [`AcceptMode::ReusePort`]. Returns the sockets grouped by address, and each group's real
/// address (the port the kernel picked when given port 0).
pub(crate) fn bind_all(
    config: &ListenerConfig,
) -> Result<Vec<(SocketAddr, Vec<TcpListener>)>, Error> {
    let per_addr = match config.accept_mode {
        AcceptMode::Shared => 1,
        AcceptMode::ReusePort => config.accept_loops,
    };
    let reuse_port = config.reuse_port || config.accept_mode == AcceptMode::ReusePort;
    let mut groups = Vec::with_capacity(config.addrs.len());
    for &requested in &config.addrs {
        let mut addr = requested;
        let mut sockets = Vec::with_capacity(per_addr);
        for _ in 0..per_addr {
            let listener = bind_one(config, addr, reuse_port)?;
            // Every further socket of the group binds the port the first one got.
            addr = listener
                .local_addr()
                .map_err(|source| Error::Bind { addr, source })?;
            sockets.push(listener);
        }
        groups.push((addr, sockets));
    }
    Ok(groups)
}

fn bind_one(
    config: &ListenerConfig,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<TcpListener, Error> {
    let option = |option: &'static str| {
        move |source| Error::SocketOption {
            option,
            addr,
            source,
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|source| Error::Socket { addr, source })?;
    socket.set_nonblocking(true).map_err(option("O_NONBLOCK"))?;
    socket
        .set_reuse_address(true)
        .map_err(option("SO_REUSEADDR"))?;
    if addr.is_ipv6() {
        socket
            .set_only_v6(config.ipv6_only)
            .map_err(option("IPV6_V6ONLY"))?;
    }
    if reuse_port {
        #[cfg(unix)]
        socket
            .set_reuse_port(true)
            .map_err(option("SO_REUSEPORT"))?;
    }
    // Accepted sockets inherit these on Linux; they are set again per connection for other systems.
    socket
        .set_tcp_nodelay(config.nodelay)
        .map_err(option("TCP_NODELAY"))?;
    if let Some(keepalive) = &config.keepalive {
        socket
            .set_tcp_keepalive(&keepalive_params(keepalive))
            .map_err(option("SO_KEEPALIVE"))?;
    }
    #[cfg(target_os = "linux")]
    {
        if let Some(queue_len) = config.tcp_fastopen {
            super::sys::set_tcp_fastopen(&socket, queue_len).map_err(option("TCP_FASTOPEN"))?;
        }
        if let Some(wait) = config.tcp_defer_accept {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            super::sys::set_tcp_defer_accept(&socket, seconds)
                .map_err(option("TCP_DEFER_ACCEPT"))?;
        }
    }
    socket
        .bind(&addr.into())
        .map_err(|source| Error::Bind { addr, source })?;
    // validate() bounds the backlog to i32::MAX.
    socket
        .listen(config.backlog as i32)
        .map_err(|source| Error::Listen { addr, source })?;
    Ok(socket.into())
}

fn keepalive_params(k: &Keepalive) -> TcpKeepalive {
    let params = TcpKeepalive::new()
        .with_time(k.idle)
        .with_interval(k.interval);
    #[cfg(not(any(target_os = "windows", target_os = "openbsd")))]
    let params = params.with_retries(k.retries);
    params
}

/// Per-connection options, set right after accept where the kernel does not copy them from the
/// listening socket.
#[cfg(not(target_os = "linux"))]
pub(crate) fn tune_accepted(
    stream: &tokio::net::TcpStream,
    nodelay: bool,
    keepalive: Option<&Keepalive>,
) -> io::Result<()> {
    stream.set_nodelay(nodelay)?;
    if let Some(k) = keepalive {
        SockRef::from(stream).set_tcp_keepalive(&keepalive_params(k))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_port_mode_binds_one_socket_per_loop_on_one_port() {
        let mut config = ListenerConfig::default();
        config
            .listen("127.0.0.1:0".parse().unwrap())
            .accept_loops(3)
            .accept_mode(AcceptMode::ReusePort);
        let groups = bind_all(&config).unwrap();
        assert_eq!(groups.len(), 1);
        let (addr, sockets) = &groups[0];
        assert_ne!(addr.port(), 0);
        assert_eq!(sockets.len(), 3);
        for s in sockets {
            assert_eq!(s.local_addr().unwrap(), *addr);
        }
    }

    #[test]
    fn a_taken_port_is_a_bind_error_without_reuse_port() {
        let mut config = ListenerConfig::default();
        config.listen("127.0.0.1:0".parse().unwrap());
        let groups = bind_all(&config).unwrap();
        let taken = groups[0].0;
        let mut second = ListenerConfig::default();
        second.listen(taken);
        match bind_all(&second) {
            Err(Error::Bind { addr, .. }) => assert_eq!(addr, taken),
            other => panic!("expected a bind error, got {other:?}"),
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn fastopen_and_defer_accept_are_set() {
        let mut config = ListenerConfig::default();
        config
            .listen("127.0.0.1:0".parse().unwrap())
            .tcp_fastopen(Some(128))
            .tcp_defer_accept(Some(std::time::Duration::from_millis(1500)));
        let groups = bind_all(&config).unwrap();
        let listener = &groups[0].1[0];
        assert!(SockRef::from(listener).tcp_nodelay().unwrap());
        assert_eq!(
            super::super::sys::get_tcp_int(listener, libc::TCP_FASTOPEN).unwrap(),
            128
        );
        // The kernel stores DEFER_ACCEPT as a retransmit count and reports it back rounded up to
        // that schedule, so only "on, and at least what was asked" is checked.
        assert!(super::super::sys::get_tcp_int(listener, libc::TCP_DEFER_ACCEPT).unwrap() >= 2);
    }

    /// The accept path relies on this on Linux instead of setting the options per connection.
    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let mut config = ListenerConfig::default();
        let keepalive = Keepalive {
            idle: std::time::Duration::from_secs(42),
            interval: std::time::Duration::from_secs(7),
            retries: 3,
        };
        config
            .listen("127.0.0.1:0".parse().unwrap())
            .keepalive(Some(keepalive));
        let groups = bind_all(&config).unwrap();
        let (addr, sockets) = &groups[0];
        let _client = std::net::TcpStream::connect(addr).unwrap();
        sockets[0].set_nonblocking(false).unwrap();
        let (accepted, _) = sockets[0].accept().unwrap();
        let sock = SockRef::from(&accepted);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), keepalive.idle);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), keepalive.interval);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), keepalive.retries);
    }
}
