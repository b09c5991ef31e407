//! The out-side: where requests go. A teleport client (teleport, teleports) or a pool of
//! hyper clients (http, https, unix), each balancing over the `-out` addresses by least pending
//! with passive health.

mod connect;
mod http;
mod teleport;

use std::error::Error as StdError;
use std::fmt::Write as _;

use ::http::{Request, Response};
use bytes::Bytes;

use crate::config::{Kind, ProxyConfig};
use crate::metrics::SideCounters;
use crate::proxy::ForwardError;

pub(crate) use self::http::HttpUpstreams;
pub(crate) use self::teleport::limits;

/// The out-side of one proxy.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// teleport or teleports.
    Teleport(teleport_client::Client),
    /// http, https or unix.
    Http(HttpUpstreams),
}

impl Outbound {
    /// The out-side `config` describes; its connections count into `counters`.
    pub(crate) fn new(config: &ProxyConfig, counters: SideCounters) -> anyhow::Result<Self> {
        Ok(match config.out_kind {
            Kind::Teleport | Kind::Teleports => {
                Outbound::Teleport(teleport::client(config, counters)?)
            }
            Kind::Http | Kind::Https | Kind::Unix => {
                Outbound::Http(HttpUpstreams::new(config, counters)?)
            }
        })
    }

    /// Sends `request` (hop-by-hop headers already gone) and returns the whole response.
    pub(crate) async fn send(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, ForwardError> {
        match self {
            Outbound::Teleport(client) => teleport::send(client, request).await,
            Outbound::Http(pool) => pool.send(request).await,
        }
    }
}

/// `error` and its sources, `: `-joined, for the one-line text of a 502.
pub(crate) fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let _ = write!(text, ": {e}");
        source = e.source();
    }
    text
}
