//! teleport and teleports out: one `teleport_client::Client` over every `-out` address, with
//! `-outConnsPerAddr` connections each, counted on the wire.

use std::io;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use teleport_client::{BoxIo, Client, ClientTls, Error as TeleportError};
use teleport_transport::ProtocolError;
use teleport_transport::frame::{ErrorCode, Limits};
use tokio::net::TcpStream;

use super::chain;
use crate::config::ProxyConfig;
use crate::counted::Counted;
use crate::metrics::SideCounters;
use crate::proxy::ForwardError;

/// The teleport client `config` describes.
pub(super) fn client(config: &ProxyConfig, counters: SideCounters) -> anyhow::Result<Client> {
    let conns = config.outs.len() * config.out_conns_per_addr;
    let mut builder = Client::builder();
    builder
        .addrs(config.outs.iter().cloned())
        .conns_per_addr(config.out_conns_per_addr)
        .compression(config.out_codec)
        .levels(config.levels)
        .max_batch_delay(config.out_delay)
        .limits(limits(config.out_max_header_size, config.out_max_body_size))
        // As the Go httptp: the concurrency spread over the connections (the server's
        // announced limit caps it further).
        .max_pending(config.concurrency.div_ceil(conns).max(1))
        .timeout(config.out_timeout)
        // A dead upstream answers 502 at once rather than after -outTimeout.
        .wait_for_ready(false)
        .connector(move |addr: &str| {
            let addr = addr.to_owned();
            let counters = counters.clone();
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                Ok::<BoxIo, io::Error>(Box::new(Counted::new(tcp, counters)))
            }
        });
    if let Some(tls) = &config.out_tls {
        let mut tls = ClientTls::from_rustls(tls.clone());
        if let Some(name) = &config.out_tls_server_name {
            tls.server_name(name)?;
        }
        builder.tls(tls);
    }
    Ok(builder.build()?)
}

/// Receiver limits for header blocks of `max_header` bytes and bodies of `max_body` bytes.
pub(crate) fn limits(max_header: u32, max_body: u32) -> Limits {
    Limits {
        max_header_bytes: max_header,
        max_body,
        // Room for both plus the fixed fields and the per-field length prefixes.
        max_frame: max_body
            .saturating_add(max_header.saturating_mul(2))
            .saturating_add(4096),
        ..Limits::default()
    }
}

pub(super) async fn send(
    client: &Client,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, ForwardError> {
    client.send(request).await.map_err(|error| match error {
        e if e.is_timeout() || e.remote_code() == Some(ErrorCode::TIMEOUT) => ForwardError::Timeout,
        e if e.is_overloaded() => ForwardError::Overloaded(chain(&e)),
        // Not sent: the request's own fault, told to its client.
        TeleportError::RequestTooLarge(
            ref source @ (ProtocolError::TooManyHeaders { .. }
            | ProtocolError::HeadersTooLarge { .. }),
        ) => ForwardError::Refused(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request header fields too large for the upstream: {source}"),
        ),
        TeleportError::RequestTooLarge(ref source) => ForwardError::Refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request too large for the upstream: {source}"),
        ),
        TeleportError::InvalidRequest(ref source) => ForwardError::Refused(
            StatusCode::BAD_REQUEST,
            format!("request cannot be forwarded over teleport: {source}"),
        ),
        e => ForwardError::BadGateway(chain(&e)),
    })
}
