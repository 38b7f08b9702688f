//! The fabric's own certificate authority: `sitectl pki init` and `sitectl pki issue`.
//!
//! Layout of a PKI directory: `ca.crt`, `ca.key`, and `<role>-<node>.crt` / `.key` per issued
//! identity. Keys are written with mode 0600. Nothing is ever overwritten: re-running `init` on
//! a directory that holds a CA, or issuing an identity that exists, is refused.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{Identity, Role};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("no CA in {0} (run `sitectl pki init --dir {0}` first)")]
    NoCa(PathBuf),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// When an issued certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew between sites) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

/// Paths of one issued identity in a PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.crt")
}

fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// The fabric's datagram key ([`crate::sealed`]), written with the CA: every agent's
/// `failover.swim_key_file`.
pub fn swim_key_path(dir: &Path) -> PathBuf {
    dir.join("swim.key")
}

/// Where the files of an identity live in a PKI directory.
pub fn issued_paths(dir: &Path, role: Role, node: &str) -> Issued {
    Issued {
        cert: dir.join(format!("{role}-{node}.crt")),
        key: dir.join(format!("{role}-{node}.key")),
    }
}

fn write_new(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists(path.to_path_buf())
        } else {
            PkiError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Creates a new fabric CA in `dir` (created if missing). Returns the CA certificate's path.
pub fn init_ca(dir: &Path, fabric_name: &str) -> Result<PathBuf, PkiError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    for p in [ca_cert_path(dir), ca_key_path(dir), swim_key_path(dir)] {
        if p.exists() {
            return Err(PkiError::Exists(p));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{fabric_name} fabric CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    let cert = params.self_signed(&key)?;
    write_new(&ca_key_path(dir), &key.serialize_pem(), true)?;
    write_new(&ca_cert_path(dir), &cert.pem(), false)?;
    let swim = crate::sealed::SealKey::generate().map_err(|reason| PkiError::Invalid {
        path: swim_key_path(dir),
        reason,
    })?;
    write_new(&swim_key_path(dir), &format!("{swim}\n"), true)?;
    Ok(ca_cert_path(dir))
}

/// Issues a certificate for `identity`, signed by the CA in `dir`.
pub fn issue(dir: &Path, identity: &Identity, validity: Validity) -> Result<Issued, PkiError> {
    let (ca_cert, ca_key) = (ca_cert_path(dir), ca_key_path(dir));
    if !ca_cert.exists() || !ca_key.exists() {
        return Err(PkiError::NoCa(dir.to_path_buf()));
    }
    let read = |p: &Path| fs::read_to_string(p).map_err(io_err(p));
    let ca_key_pair = KeyPair::from_pem(&read(&ca_key)?).map_err(|e| PkiError::Invalid {
        path: ca_key.clone(),
        reason: e.to_string(),
    })?;
    let issuer =
        Issuer::from_ca_cert_pem(&read(&ca_cert)?, ca_key_pair).map_err(|e| PkiError::Invalid {
            path: ca_cert.clone(),
            reason: e.to_string(),
        })?;

    let out = issued_paths(dir, identity.role, &identity.node);
    for p in [&out.cert, &out.key] {
        if p.exists() {
            return Err(PkiError::Exists(p.clone()));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("{} {}", identity.role, identity.node),
    );
    dn.push(DnType::OrganizationalUnitName, identity.site.clone());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::URI(identity.uri().try_into()?),
        SanType::DnsName(format!("{}.{}.fabric", identity.node, identity.site).try_into()?),
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match identity.role {
        // Agents are servers (WAN, admin API) and clients (WAN).
        Role::Agent => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&out.key, &key.serialize_pem(), true)?;
    write_new(&out.cert, &cert.pem(), false)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificate_carries_its_identity() {
        let dir = tempfile::tempdir().expect("tmp");
        init_ca(dir.path(), "test").expect("ca");
        let id = Identity::new("3", "s2", Role::Agent).expect("id");
        let issued = issue(dir.path(), &id, Validity::days(1)).expect("issue");
        let pem = fs::read(&issued.cert).expect("read");
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem);
        let der: rustls_pki_types::CertificateDer = der.expect("pem");
        assert_eq!(Identity::from_cert_der(&der).expect("identity"), id);
    }

    #[test]
    fn nothing_is_overwritten() {
        let dir = tempfile::tempdir().expect("tmp");
        init_ca(dir.path(), "test").expect("ca");
        assert!(matches!(
            init_ca(dir.path(), "test"),
            Err(PkiError::Exists(_))
        ));
        let id = Identity::new("alice", "s1", Role::Operator).expect("id");
        issue(dir.path(), &id, Validity::days(1)).expect("first");
        assert!(matches!(
            issue(dir.path(), &id, Validity::days(1)),
            Err(PkiError::Exists(_))
        ));
    }

    #[test]
    fn issue_without_ca_names_the_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        let id = Identity::new("1", "s1", Role::Agent).expect("id");
        let err = issue(dir.path(), &id, Validity::days(1)).expect_err("no ca");
        assert!(err.to_string().contains("no CA in"), "{err}");
    }
}
