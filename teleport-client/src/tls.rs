//! TLS to upstreams: rustls with the `ring` provider, verification always on.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::Error;

/// How the client speaks TLS: the CAs it trusts, and optionally the certificate it presents
/// (mutual TLS) and the name it expects.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: Option<ServerName<'static>>,
}

impl ClientTls {
    /// Trusts the CA certificates in `ca_pem`; presents `identity` (certificate chain PEM, private
    /// key PEM) when the server asks for a client certificate.
    pub fn from_pem(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        for cert in parse_certs(ca_pem, "CA")? {
            roots.add(cert).map_err(Error::TlsConfig)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::TlsConfig)?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let certs = parse_certs(cert_pem, "client certificate")?;
                let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| Error::Pem {
                    what: "client key",
                    source: Some(source),
                })?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(Error::TlsConfig)?
            }
        };
        Ok(Self::from_rustls(Arc::new(config)))
    }

    /// As [`from_pem`](Self::from_pem), reading the files.
    pub fn from_pem_files(
        ca: impl AsRef<Path>,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self, Error> {
        let ca = read(ca.as_ref())?;
        match identity {
            None => Self::from_pem(&ca, None),
            Some((cert, key)) => Self::from_pem(&ca, Some((&read(cert)?, &read(key)?))),
        }
    }

    /// A rustls config of your own (other roots, a custom verifier, session caching, ALPN).
    pub fn from_rustls(config: Arc<ClientConfig>) -> Self {
        Self {
            config,
            server_name: None,
        }
    }

    /// The name the server's certificate must carry. Default: the host part of each upstream
    /// address.
    pub fn server_name(&mut self, name: &str) -> Result<&mut Self, Error> {
        self.server_name = Some(parse_server_name(name)?);
        Ok(self)
    }
}

pub(crate) fn parse_server_name(name: &str) -> Result<ServerName<'static>, Error> {
    let host = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| Error::ServerName {
        name: name.to_owned(),
    })
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
pub(crate) fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

fn parse_certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            what,
            source: Some(source),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem { what, source: None });
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("example.com:443"), "example.com");
        assert_eq!(host_of("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(host_of("::1"), "::1");
    }

    #[test]
    fn empty_ca_is_a_typed_error() {
        let err = ClientTls::from_pem(b"", None).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Pem {
                    what: "CA",
                    source: None
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn bad_server_name_is_a_typed_error() {
        let err = parse_server_name("not a name!").unwrap_err();
        assert!(matches!(err, Error::ServerName { .. }), "{err:?}");
        assert!(parse_server_name("[::1]").is_ok());
    }
}
