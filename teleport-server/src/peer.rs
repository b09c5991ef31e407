//! Who is on the other end of a connection, for handlers that authorize by address or by client
//! certificate.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use teleport_transport::listener::{ConnContext, Stream};

/// The peer of the connection a request came on: its address and, over TLS, what the
/// handshake established. With [`ServerConfig::peer_extension`](crate::ServerConfig::peer_extension)
/// on, every request of a connection that [`Server::serve`](crate::Server::serve) accepted
/// carries one as an extension: `request.extensions().get::<Peer>()`, or axum's
/// `Extension<Peer>` extractor.
///
/// Cheap to clone: one per connection, shared by its requests.
#[derive(Clone)]
pub struct Peer(Arc<Inner>);

struct Inner {
    addr: SocketAddr,
    local_addr: SocketAddr,
    tls: bool,
    certificates: Vec<CertificateDer<'static>>,
    server_name: Option<String>,
}

impl Peer {
    /// A plaintext peer at `addr`, connected to `local_addr`: for connections served with
    /// [`Server::serve_connection_from`](crate::Server::serve_connection_from).
    pub fn new(addr: SocketAddr, local_addr: SocketAddr) -> Self {
        Peer(Arc::new(Inner {
            addr,
            local_addr,
            tls: false,
            certificates: Vec::new(),
            server_name: None,
        }))
    }

    /// The peer of a connection the listener accepted: its address, and over TLS the client
    /// certificates and the server name the client asked for.
    pub fn of(stream: &Stream, cx: &ConnContext) -> Self {
        let session = stream.tls_session();
        Peer(Arc::new(Inner {
            addr: cx.peer_addr(),
            local_addr: cx.local_addr(),
            tls: session.is_some(),
            certificates: session
                .and_then(|s| s.peer_certificates())
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            server_name: session.and_then(|s| s.server_name()).map(str::to_owned),
        }))
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// The local address the peer connected to.
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.0.tls
    }

    /// The certificate chain the client presented in a mutual-TLS handshake, its own first;
    /// verified against the listener's client CA. Empty without TLS or without a client
    /// certificate.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.0.certificates
    }

    /// The server name the client sent in its TLS handshake (SNI), if any.
    pub fn server_name(&self) -> Option<&str> {
        self.0.server_name.as_deref()
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("addr", &self.0.addr)
            .field("local_addr", &self.0.local_addr)
            .field("tls", &self.0.tls)
            .field("certificates", &self.0.certificates.len())
            .field("server_name", &self.0.server_name)
            .finish()
    }
}
