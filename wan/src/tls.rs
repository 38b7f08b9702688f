//! rustls configurations for mutual TLS between fabric members, with the fabric's refusals:
//! a certificate from another CA, an expired one, or one whose role is not accepted at this door.
//!
//! Invariant: both directions verify the peer chain against the fabric CA, and the peer's
//! identity (node, site, role) is read from that verified certificate only. Server names are not
//! checked: peers are addressed by IP, and who they are comes from the identity; callers that
//! expect a particular node compare it after the handshake.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsFailure, RootCertStore,
    SignatureScheme,
};

use crate::identity::{Identity, Role};

/// Paths of the files one member needs: the fabric CA and its own certificate and key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Fabric CA certificate (PEM).
    pub ca: PathBuf,
    /// This member's certificate (PEM).
    pub cert: PathBuf,
    /// This member's private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Resolves relative paths against `base` (the directory of the file that named them).
    pub fn relative_to(&self, base: &Path) -> TlsFiles {
        TlsFiles {
            ca: base.join(&self.ca),
            cert: base.join(&self.cert),
            key: base.join(&self.key),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key in it")]
    NoKey { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] TlsFailure),
}

/// The fabric crypto provider (ring), chosen explicitly so no process-wide default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A loaded member: trust roots, own chain and key, and the identity its certificate carries.
pub struct FabricTls {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
}

impl fmt::Debug for FabricTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FabricTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

impl FabricTls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in certs(&files.ca)? {
            roots.add(ca).map_err(|e| TlsError::Invalid {
                path: files.ca.clone(),
                reason: e.to_string(),
            })?;
        }
        let chain = certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
                path: files.key.clone(),
            },
            e => TlsError::Invalid {
                path: files.key.clone(),
                reason: e.to_string(),
            },
        })?;
        let identity = Identity::from_cert_der(&chain[0]).map_err(|e| TlsError::Invalid {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            roots: Arc::new(roots),
            chain,
            key,
            identity,
        })
    }

    /// A secret stable across restarts of this member (derived from its private key), for
    /// keys that peers must recognise after a restart, such as QUIC stateless resets.
    pub fn stable_secret(&self, purpose: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"fabric stable secret\0");
        ctx.update(purpose.as_bytes());
        ctx.update(b"\0");
        ctx.update(self.key.secret_der());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The identity of this member's own certificate.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A server config that requires a client certificate of role `accept`.
    pub fn server_config(
        &self,
        accept: Role,
        tls13_only: bool,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let inner =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(TlsFailure::General(e.to_string())))?;
        let verifier = Arc::new(RoleClientVerifier { inner, accept });
        let builder = rustls::ServerConfig::builder_with_provider(provider);
        let builder = if tls13_only {
            builder.with_protocol_versions(&[&rustls::version::TLS13])?
        } else {
            builder.with_safe_default_protocol_versions()?
        };
        Ok(builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?)
    }

    /// A client config that presents this member's certificate and requires the server to be
    /// an agent of this fabric.
    pub fn client_config(&self, tls13_only: bool) -> Result<rustls::ClientConfig, TlsError> {
        let provider = provider();
        let verifier = Arc::new(AgentServerVerifier {
            roots: self.roots.clone(),
            algs: provider.signature_verification_algorithms,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider);
        let builder = if tls13_only {
            builder.with_protocol_versions(&[&rustls::version::TLS13])?
        } else {
            builder.with_safe_default_protocol_versions()?
        };
        Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?)
    }
}

/// Reads the identity of a verified peer chain.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<Identity> {
    chain.first().and_then(|c| Identity::from_cert_der(c).ok())
}

/// Words an operator understands for why a certificate was refused.
pub fn describe_refusal(e: &TlsFailure) -> String {
    match e {
        TlsFailure::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "it was not issued by this fabric's CA".into()
        }
        TlsFailure::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "it has expired".into(),
        TlsFailure::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "it is not valid yet".into(),
        TlsFailure::InvalidCertificate(CertificateError::InvalidPurpose) => {
            "its key usage does not allow this role".into()
        }
        other => other.to_string(),
    }
}

fn check_role(end_entity: &CertificateDer<'_>, accept: Role, side: &str) -> Result<(), TlsFailure> {
    match Identity::from_cert_der(end_entity) {
        Ok(id) if id.role == accept => Ok(()),
        Ok(id) => {
            tracing::warn!(peer = %id, "refused {side} certificate of {id}: role {} is not accepted here (need {accept})", id.role);
            Err(TlsFailure::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
        Err(e) => {
            tracing::warn!("refused {side} certificate: {e}");
            Err(TlsFailure::InvalidCertificate(
                CertificateError::BadEncoding,
            ))
        }
    }
}

/// WebPKI chain verification plus the role check, with a log line for every refusal.
#[derive(Debug)]
struct RoleClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    accept: Role,
}

impl ClientCertVerifier for RoleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsFailure> {
        let who = Identity::from_cert_der(end_entity)
            .map(|id| id.to_string())
            .unwrap_or_else(|_| "unknown peer".into());
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| {
                tracing::warn!(
                    "refused client certificate of {who}: {}",
                    describe_refusal(e)
                )
            })?;
        check_role(end_entity, self.accept, "client")?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsFailure> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsFailure> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies that a server is an agent of this fabric; ignores the server name (see module doc).
#[derive(Debug)]
struct AgentServerVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AgentServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsFailure> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )
        .inspect_err(|e| tracing::warn!("refused server certificate: {}", describe_refusal(e)))?;
        check_role(end_entity, Role::Agent, "server")?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsFailure> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsFailure> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
