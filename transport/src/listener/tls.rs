//! TLS for the listener: PEM loading, optional client certificates (mTLS), and the rustls
//! `ServerConfig` built once at bind with the `ring` provider.

use std::path::Path;
use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::RootCertStore;
use rustls::server::{NoServerSessionStorage, ProducesTickets, ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// The first byte of every TLS record carrying a handshake message (`ContentType::Handshake`).
pub(crate) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// TLS settings for a listener.
///
/// ```no_run
/// use teleport_transport::listener::TlsConfig;
///
/// let mut tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// tls.client_ca_pem_file("clients-ca.pem")?; // mutual TLS
/// # Ok::<(), teleport_transport::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TlsConfig {
    cert_chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    client_roots: Option<RootCertStore>,
    alpn: Vec<Vec<u8>>,
    allow_plaintext: bool,
    resumption: bool,
    ticket_key: Option<TicketKey>,
    /// SHA-256 of the client CA PEM, when there is one: tickets are bound to it.
    client_ca_digest: Option<[u8; 32]>,
}

/// The ticket key, kept out of `Debug` output.
#[derive(Clone)]
struct TicketKey([u8; 32]);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

/// The shortest ticket secret taken: a shorter one could be guessed offline from a captured
/// ticket (each guess is checked by the ticket's authentication tag).
pub const MIN_TICKET_SECRET_LEN: usize = 32;

// ===== impl TlsConfig =====

impl TlsConfig {
    /// Builds from PEM text: the certificate chain (leaf first) and its private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let cert_chain = parse_certs(cert_chain_pem, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| Error::Pem {
            what: "private key",
            source,
        })?;
        Ok(TlsConfig::new(cert_chain, key))
    }

    fn new(cert_chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        TlsConfig {
            cert_chain,
            key: Arc::new(key),
            client_roots: None,
            alpn: Vec::new(),
            allow_plaintext: false,
            resumption: true,
            ticket_key: None,
            client_ca_digest: None,
        }
    }

    /// Builds from PEM files; see [`from_pem`](Self::from_pem).
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        Self::from_pem(&read(cert_chain.as_ref())?, &read(key.as_ref())?)
    }

    /// Requires clients to present a certificate signed by one of these CAs (mutual TLS).
    /// Default: no client certificate is asked for.
    pub fn client_ca_pem(&mut self, ca_pem: &[u8]) -> Result<&mut Self, Error> {
        let mut roots = RootCertStore::empty();
        for cert in parse_certs(ca_pem, "client CA")? {
            roots.add(cert).map_err(Error::Tls)?;
        }
        self.client_roots = Some(roots);
        self.client_ca_digest = Some(sha256(ca_pem));
        Ok(self)
    }

    /// [`client_ca_pem`](Self::client_ca_pem) from a file.
    pub fn client_ca_pem_file(&mut self, path: impl AsRef<Path>) -> Result<&mut Self, Error> {
        self.client_ca_pem(&read(path.as_ref())?)
    }

    /// ALPN protocols offered, most preferred first. Default: none.
    pub fn alpn_protocols(&mut self, protocols: Vec<Vec<u8>>) -> &mut Self {
        self.alpn = protocols;
        self
    }

    /// Also accepts plaintext peers on the same port, told apart by their first byte (a TLS
    /// ClientHello starts with `0x16`). Default `false`: plaintext peers are refused and counted
    /// as rejected. Not with a [client CA](Self::client_ca_pem): binding refuses the pair, as
    /// plaintext peers would get in without a certificate.
    pub fn allow_plaintext(&mut self, allow: bool) -> &mut Self {
        self.allow_plaintext = allow;
        self
    }

    /// Whether returning clients may resume sessions (TLS 1.3 tickets, TLS 1.2 session ids).
    /// Default `true`; turn it off to make every handshake a full one.
    pub fn session_resumption(&mut self, on: bool) -> &mut Self {
        self.resumption = on;
        self
    }

    /// Seals session tickets (AES-256-GCM) with a key derived from `secret` (SHA-256), so that
    /// listeners given the same secret (several processes or hosts behind one name) resume
    /// each other's sessions. A ticket is bound to the listener's client CA (or its lack): one
    /// requiring client certificates never resumes a session made where they were not, or
    /// signed by another CA. Default: none; sessions resume only with the process that made
    /// them (its in-memory session cache).
    ///
    /// The secret must be at least [`MIN_TICKET_SECRET_LEN`] bytes, random, and kept as secret
    /// as the certificate's key: whoever has it can open recorded tickets (a TLS 1.2 ticket
    /// holds its session's master secret) and forge them, client identity included. It does
    /// not rotate: change it (and restart) now and then.
    pub fn session_ticket_key(&mut self, secret: &[u8]) -> Result<&mut Self, Error> {
        if secret.len() < MIN_TICKET_SECRET_LEN {
            return Err(Error::InvalidConfig {
                field: "session_ticket_key",
                reason: "the secret must be at least 32 bytes (a short one can be guessed \
                         offline from a captured ticket)",
            });
        }
        self.ticket_key = Some(TicketKey(sha256(secret)));
        Ok(self)
    }

    pub(crate) fn plaintext_allowed(&self) -> bool {
        self.allow_plaintext
    }

    pub(crate) fn requires_client_cert(&self) -> bool {
        self.client_roots.is_some()
    }

    /// The rustls config, built once at bind so that setup errors surface there.
    pub(crate) fn build(&self) -> Result<Arc<ServerConfig>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?;
        let builder = match &self.client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider)
                        .build()
                        .map_err(Error::ClientVerifier)?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(Error::Tls)?;
        config.alpn_protocols = self.alpn.clone();
        if !self.resumption {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        } else if let Some(key) = &self.ticket_key {
            config.ticketer = Arc::new(SharedKeyTicketer::new(&key.0, self.client_ca_digest));
        }
        Ok(Arc::new(config))
    }
}

/// How long a ticket is good for, in seconds.
const TICKET_LIFETIME: u32 = 12 * 60 * 60;

/// Session tickets sealed (AES-256-GCM, a random nonce each) with a key that listeners share,
/// and bound (as associated data) to the listener's client-certificate policy.
struct SharedKeyTicketer {
    key: LessSafeKey,
    random: SystemRandom,
    /// `teleport ticket v1`, then 0 (no client certificates) or 1 and the client CA's digest.
    policy: Vec<u8>,
}

impl SharedKeyTicketer {
    fn new(key: &[u8; 32], client_ca_digest: Option<[u8; 32]>) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key");
        let mut policy = b"teleport ticket v1".to_vec();
        match client_ca_digest {
            None => policy.push(0),
            Some(digest) => {
                policy.push(1);
                policy.extend_from_slice(&digest);
            }
        }
        SharedKeyTicketer {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
            policy,
        }
    }
}

impl std::fmt::Debug for SharedKeyTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKeyTicketer").finish_non_exhaustive()
    }
}

impl ProducesTickets for SharedKeyTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME
    }

    /// `nonce || ciphertext || tag`.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.policy),
                &mut out[NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, sealed) = cipher.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut plain = sealed.to_vec();
        let len = self
            .key
            .open_in_place(nonce, Aad::from(&self.policy), &mut plain)
            .ok()?
            .len();
        plain.truncate(len);
        Some(plain)
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn parse_certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem { what, source })?;
    if certs.is_empty() {
        return Err(Error::NoCertificates { what });
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
    fn tickets_open_only_with_the_key_that_sealed_them_and_unaltered() {
        let sealer = SharedKeyTicketer::new(&[7; 32], None);
        let plain = b"session state";
        let ticket = sealer.encrypt(plain).unwrap();
        assert_ne!(&ticket[NONCE_LEN..NONCE_LEN + plain.len()], plain);
        assert_eq!(sealer.decrypt(&ticket).unwrap(), plain);
        // A fresh nonce each time.
        assert_ne!(sealer.encrypt(plain).unwrap(), ticket);
        assert_eq!(
            SharedKeyTicketer::new(&[7; 32], None)
                .decrypt(&ticket)
                .unwrap(),
            plain
        );
        assert!(
            SharedKeyTicketer::new(&[8; 32], None)
                .decrypt(&ticket)
                .is_none()
        );
        // Another client-certificate policy: not resumed there.
        let strict = SharedKeyTicketer::new(&[7; 32], Some([1; 32]));
        assert!(strict.decrypt(&ticket).is_none());
        let other_ca = SharedKeyTicketer::new(&[7; 32], Some([2; 32]));
        assert!(other_ca.decrypt(&strict.encrypt(plain).unwrap()).is_none());
        let mut altered = ticket.clone();
        altered[NONCE_LEN] ^= 1;
        assert!(sealer.decrypt(&altered).is_none());
        assert!(sealer.decrypt(&ticket[..NONCE_LEN + 15]).is_none());
    }

    #[test]
    fn a_short_ticket_secret_is_refused_and_the_key_is_not_printed() {
        let mut tls = TlsConfig::new(Vec::new(), PrivateKeyDer::Pkcs8(Vec::new().into()));
        assert!(matches!(
            tls.session_ticket_key(&[b'k'; MIN_TICKET_SECRET_LEN - 1]),
            Err(Error::InvalidConfig {
                field: "session_ticket_key",
                ..
            })
        ));
        tls.session_ticket_key(&[b'k'; MIN_TICKET_SECRET_LEN])
            .unwrap();
        let key = sha256(&[b'k'; MIN_TICKET_SECRET_LEN]);
        let printed = format!("{tls:?}");
        assert!(printed.contains("TicketKey(..)"), "{printed}");
        assert!(!printed.contains(&format!("{key:?}")), "{printed}");
    }

    #[test]
    fn empty_pem_is_a_typed_error() {
        let err = TlsConfig::from_pem(b"", b"").unwrap_err();
        assert!(matches!(
            err,
            Error::NoCertificates {
                what: "certificate chain"
            }
        ));
    }

    #[test]
    fn garbage_key_is_a_typed_error() {
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = TlsConfig::from_pem(cert.as_bytes(), b"not a key").unwrap_err();
        assert!(
            matches!(
                err,
                Error::Pem {
                    what: "private key",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err =
            TlsConfig::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
        assert_eq!(err.to_string(), "cannot read /nonexistent/cert.pem");
    }
}
