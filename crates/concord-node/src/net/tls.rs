//! Mutual TLS between nodes with keys pinned in the charter: no CA, no unpinned peer, TLS 1.3 only.
//!
//! Each node has a self-signed certificate; what identifies it is the SHA-256 pin of its
//! SubjectPublicKeyInfo, which the charter lists per member. The server side accepts a client
//! certificate only if its pin belongs to a member; the client side accepts a server certificate
//! only if its pin is the one of the member it dialled. The handshake signatures are still
//! checked with the certificate's key, so holding a certificate without its key gets nowhere.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::NodeError;

/// A freshly generated TLS identity, PEM encoded.
pub struct TlsIdentity {
    /// The self-signed certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM; to be written 0600.
    pub key_pem: String,
    /// `sha256/<base64>` of the certificate's DER SubjectPublicKeyInfo: what the charter pins.
    pub pin: String,
}

/// Generates a self-signed certificate for `member` with a new key.
pub fn generate(member: &str) -> Result<TlsIdentity, NodeError> {
    let ck = rcgen::generate_simple_self_signed(vec![format!("{member}.concord.invalid")])?;
    let pin = pin_of_cert(ck.cert.der())?;
    Ok(TlsIdentity { cert_pem: ck.cert.pem(), key_pem: ck.signing_key.serialize_pem(), pin })
}

/// `sha256/<base64>` of a certificate's DER SubjectPublicKeyInfo.
pub fn pin_of_cert(der: &[u8]) -> Result<String, NodeError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| NodeError::Tls("peer certificate is not valid X.509".into()))?;
    Ok(format!("sha256/{}", B64.encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))))
}

/// The node's own certificate chain and key, loaded from PEM files.
pub struct TlsKeys {
    /// The node's certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The certificate's private key, DER.
    pub key: PrivateKeyDer<'static>,
    /// `sha256/<base64>` of the certificate's DER SubjectPublicKeyInfo.
    pub pin: String,
    /// Client configurations per expected server pin, built once: the key is parsed once, and
    /// each keeps its TLS 1.3 session tickets, so later connections to that server resume
    /// without certificates (the server still maps the resumed session to a current member's
    /// pin at every connection).
    clients: std::sync::Mutex<std::collections::HashMap<Option<String>, Arc<rustls::ClientConfig>>>,
    /// Open HTTP/2 connections to peers, made with these keys.
    pub pool: crate::net::pool::Pool,
}

impl TlsKeys {
    /// Reads the certificate and key from their PEM files; the caller checks the key file is
    /// private.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, NodeError> {
        let cert = CertificateDer::from_pem_file(cert_path)
            .map_err(|source| NodeError::Pem { path: cert_path.display().to_string(), source })?;
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|source| NodeError::Pem { path: key_path.display().to_string(), source })?;
        let pin = pin_of_cert(&cert)?;
        Ok(Self { cert, key, pin, clients: Default::default(), pool: Default::default() })
    }

    /// The client configuration for a server with `pin` (any server with `None`), built once.
    pub fn client(&self, pin: Option<&str>) -> Result<Arc<rustls::ClientConfig>, NodeError> {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(&pin.map(str::to_owned)) {
            return Ok(c.clone());
        }
        // Pins come from charter versions; a bound keeps a long-lived node's map small.
        if clients.len() >= 4096 {
            clients.clear();
        }
        let config = Arc::new(client_config(self, pin)?);
        clients.insert(pin.map(str::to_owned), config.clone());
        Ok(config)
    }

    fn clone_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// (pin, member id) of every other member, as the current charter version says. Read at every
/// handshake, so that a new version (a member added, removed, or a pin rotated) takes effect for
/// the next connection.
#[derive(Clone, Debug, Default)]
pub struct Pins(Arc<std::sync::RwLock<Arc<PinList>>>);

/// (pin, member id) pairs.
pub type PinList = Vec<(String, String)>;

impl Pins {
    /// A shared list holding `pins`; clones share it.
    pub fn new(pins: PinList) -> Self {
        Self(Arc::new(std::sync::RwLock::new(Arc::new(pins))))
    }

    /// The list in force now (a snapshot: a later `set` does not change it).
    pub fn get(&self) -> Arc<PinList> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the list for every clone, from the next handshake on.
    pub fn set(&self, pins: PinList) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(pins);
    }

    /// The member whose pin this is.
    pub fn member(&self, pin: &str) -> Option<String> {
        self.get().iter().find(|(p, _)| p == pin).map(|(_, m)| m.clone())
    }
}

/// The certificate the peer listener presents: replaced whole when a charter version rotates
/// this member's TLS key, for every handshake after.
#[derive(Debug)]
pub struct ServerCert(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl ServerCert {
    /// Presents `keys`' certificate, signing handshakes with its key.
    pub fn new(keys: &TlsKeys) -> Result<Self, NodeError> {
        Ok(Self(std::sync::RwLock::new(Arc::new(certified(keys)?))))
    }

    /// Presents `keys`' certificate instead, from the next handshake on.
    pub fn set(&self, keys: &TlsKeys) -> Result<(), NodeError> {
        let key = Arc::new(certified(keys)?);
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = key;
        Ok(())
    }
}

fn certified(keys: &TlsKeys) -> Result<rustls::sign::CertifiedKey, NodeError> {
    let signing = provider().key_provider.load_private_key(keys.clone_key()).map_err(NodeError::Rustls)?;
    Ok(rustls::sign::CertifiedKey::new(vec![keys.cert.clone()], signing))
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

/// Server side: the peer listener's configuration. `pins` maps each member's pin to its id.
pub fn server_config(cert: Arc<ServerCert>, pins: Pins) -> Result<rustls::ServerConfig, NodeError> {
    let verifier = Arc::new(MemberPins { pins, algs: algorithms() });
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(NodeError::Rustls)
        .map(|b| b.with_client_cert_verifier(verifier).with_cert_resolver(cert))
        .map(|mut c| {
            // Room for the resumable sessions of a large federation's members.
            c.session_storage = rustls::server::ServerSessionMemoryCache::new(8192);
            c.alpn_protocols = alpn();
            c
        })
}

/// Client side: a configuration that accepts only the server whose pin is `expected_pin`, or,
/// with `None`, any server that proves it holds its certificate's key (a candidate fetching the
/// charter chain, which is verified by its signatures, not by who serves it).
pub fn client_config(keys: &TlsKeys, expected_pin: Option<&str>) -> Result<rustls::ClientConfig, NodeError> {
    let verifier = Arc::new(ExpectedPin { pin: expected_pin.map(str::to_owned), algs: algorithms() });
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(NodeError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![keys.cert.clone()], keys.clone_key())
        .map_err(NodeError::Rustls)
        .map(|mut c| {
            c.alpn_protocols = alpn();
            c
        })
}

/// The application protocols of peer connections, preferred first: HTTP/2 (pooled and
/// multiplexed), then HTTP/1.1 (one call per connection).
fn alpn() -> Vec<Vec<u8>> {
    vec![H2.to_vec(), b"http/1.1".to_vec()]
}

/// The ALPN name of HTTP/2.
pub const H2: &[u8] = b"h2";

/// Any name will do: the pin, not the name, identifies the server.
pub fn server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from("peer.concord.invalid").expect("static name is valid"),
    )
}

#[derive(Debug)]
struct MemberPins {
    pins: Pins,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for MemberPins {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let pin = pin_of_cert(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if self.pins.member(&pin).is_some() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[derive(Debug)]
struct ExpectedPin {
    pin: Option<String>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectedPin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin = pin_of_cert(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if self.pin.as_ref().is_none_or(|p| *p == pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The member id of the client at the other end of an accepted connection.
pub fn peer_member(conn: &rustls::ServerConnection, pins: &Pins) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let pin = pin_of_cert(cert).ok()?;
    pins.member(&pin)
}
