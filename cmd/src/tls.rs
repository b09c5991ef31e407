//! TLS for both sides: the listener's config for https/teleports in (with optional client
//! certificate checks), and one rustls client config for https/teleports out (a CA file or the
//! system's roots, an optional client certificate). Verification is always on.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use teleport_transport::listener::TlsConfig;

/// The in-side TLS config: `cert`/`key`, and when `client_ca` is set, client certificates
/// signed by it are required; with a `ticket_secret`, session tickets any httptp given the same
/// secret can resume.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    ticket_secret: &[u8],
    alpn: Vec<Vec<u8>>,
) -> anyhow::Result<TlsConfig> {
    let mut config = TlsConfig::from_pem_files(cert, key)?;
    if let Some(ca) = client_ca {
        config.client_ca_pem_file(ca)?;
    }
    if !ticket_secret.is_empty() {
        config
            .session_ticket_key(ticket_secret)
            .context("-inTLSSessionTicketKey")?;
    }
    config.alpn_protocols(alpn);
    Ok(config)
}

/// The out-side rustls config: trusts `ca` (PEM file) or else the system's roots; presents
/// `identity` (certificate chain, key) when the upstream asks.
pub(crate) fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    alpn: Vec<Vec<u8>>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading CA file {}", path.display()))?
            {
                let cert = cert.with_context(|| format!("parsing CA file {}", path.display()))?;
                roots.add(cert).context("adding a CA certificate")?;
            }
            if roots.is_empty() {
                bail!("CA file {} holds no certificate", path.display());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                bail!("no system root certificates found; give a CA file with -outTLSCA");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading certificate file {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing certificate file {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading key file {}", key.display()))?;
            builder.with_client_auth_cert(certs, key)?
        }
    };
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}
