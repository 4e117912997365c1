//! The coordinator's certificate authority, the model-signing key, and the identities carried in
//! client certificates.
//!
//! Layout of the PKI directory (`<data_dir>/pki`):
//! `ca.pem`, `ca.key`, `server.pem`, `server.key`, and the model-signing hierarchy described in
//! [`crate::signing_keys`]. Every private key is written with mode 0600.
//!
//! A bundle (what `backroom enroll` hands to a store or an engineer) is a directory with
//! `ca.pem`, `cert.pem`, `key.pem` and `model-root.pub.pem`.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Validity of issued certificates.
const CERT_VALIDITY_DAYS: i64 = 397;
const CA_VALIDITY_DAYS: i64 = 3650;
const URI_PREFIX: &str = "backroom://";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("signing key in {path} is not valid: {reason}")]
    SigningKey { path: PathBuf, reason: String },
    #[error("store-token key {path} cannot be used: {reason}")]
    StoreTokenKey { path: PathBuf, reason: String },
    #[error("invalid identity name {0:?}: use 1 to 64 characters from a-z, 0-9, '-', '_' and '.'")]
    InvalidName(String),
    #[error("bundle directory {0} already holds a certificate; remove it first")]
    BundleExists(PathBuf),
}

/// What a client certificate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A store node: may call the node service only.
    Node,
    /// A platform administrator: every admin-service call and HTTP route; sees store ids.
    Admin,
    /// An ML engineer: rounds, model versions and rollouts, quarantine, privacy reports, frame
    /// requests, metrics; sees store ids (frame requests name a store).
    MlEngineer,
    /// Operations: reads aggregates only (noised shelf metrics, round progress, model versions,
    /// node health, Prometheus); store ids appear as opaque tokens.
    Operations,
    /// A privacy officer: may call the privacy service only (decisions on frame requests), so
    /// the person who asks for a store's frames is never the one who approves it.
    PrivacyOfficer,
}

impl Role {
    /// Every role, in the order documentation lists them.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::MlEngineer,
        Role::Operations,
        Role::PrivacyOfficer,
        Role::Node,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Admin => "admin",
            Role::MlEngineer => "ml-engineer",
            Role::Operations => "operations",
            Role::PrivacyOfficer => "privacy-officer",
        }
    }

    /// The role named `name` (as in certificates: `ml-engineer`, `privacy-officer`, ...).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// "an admin", "an ML engineer"... for messages.
    pub fn with_article(self) -> String {
        match self {
            Role::Admin | Role::MlEngineer | Role::Operations => format!("an {self}"),
            _ => format!("a {self}"),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of an RPC, read from its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub role: Role,
    pub name: String,
}

/// Checks a store id or admin name.
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidName(name.to_owned()))
    }
}

/// Reads the role and name from a DER leaf certificate (SAN URI `backroom://<role>/<name>`).
pub fn peer_from_der(der: &[u8]) -> Option<Peer> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => parse_identity_uri(uri),
        _ => None,
    })
}

fn parse_identity_uri(uri: &str) -> Option<Peer> {
    let rest = uri.strip_prefix(URI_PREFIX)?;
    let (role, name) = rest.split_once('/')?;
    let role = Role::parse(role)?;
    validate_name(name).ok()?;
    Some(Peer {
        role,
        name: name.to_owned(),
    })
}

/// Paths of the PKI directory.
#[derive(Clone, Debug)]
pub struct PkiPaths {
    pub dir: PathBuf,
}

impl PkiPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn signing_key(&self) -> PathBuf {
        self.dir.join("model-signing.key")
    }
}

/// The loaded CA: can issue server, node and admin certificates.
pub struct CertificateAuthority {
    paths: PkiPaths,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.paths.dir)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, creating the CA, the model-signing key and the server
    /// certificate on first use. `server_names` are the DNS names / IPs the coordinator's
    /// certificate must cover (localhost and 127.0.0.1 are always included).
    pub fn load_or_create(dir: &Path, server_names: &[String]) -> Result<Self, IdentityError> {
        let paths = PkiPaths::new(dir);
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
            path: dir.to_owned(),
            source,
        })?;
        if !paths.ca_cert().exists() {
            create_ca(&paths)?;
        }
        let ca_pem = read(&paths.ca_cert())?;
        let key = KeyPair::from_pem(&read(&paths.ca_key())?)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)?;
        let ca = Self {
            paths,
            ca_pem,
            issuer,
        };
        crate::signing_keys::ensure_hierarchy(&ca.paths).map_err(|e| {
            IdentityError::SigningKey {
                path: ca.paths.dir.clone(),
                reason: e.to_string(),
            }
        })?;
        if !ca.paths.server_cert().exists() {
            ca.issue_server_certificate(server_names)?;
        }
        Ok(ca)
    }

    pub fn paths(&self) -> &PkiPaths {
        &self.paths
    }

    fn issue_server_certificate(&self, server_names: &[String]) -> Result<(), IdentityError> {
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        names.extend(server_names.iter().cloned());
        names.dedup();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = distinguished_name("backroom-coordinator");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_leaf_defaults(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        write_private(&self.paths.server_key(), key.serialize_pem().as_bytes())?;
        write_public(&self.paths.server_cert(), cert.pem().as_bytes())
    }

    /// Issues a client certificate for a store node or an admin without writing it anywhere
    /// (what [`CertificateAuthority::issue_bundle`] writes; the load simulation's many nodes).
    pub fn issue_identity(&self, role: Role, name: &str) -> Result<IssuedIdentity, IdentityError> {
        validate_name(name)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = distinguished_name(name);
        let uri = format!("{URI_PREFIX}{role}/{name}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_leaf_defaults(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.ca_pem.clone(),
        })
    }

    /// Issues a client bundle for a store node or an admin into `out_dir`.
    pub fn issue_bundle(
        &self,
        role: Role,
        name: &str,
        out_dir: &Path,
    ) -> Result<BundlePaths, IdentityError> {
        validate_name(name)?;
        let bundle = BundlePaths::new(out_dir);
        if bundle.cert().exists() {
            return Err(IdentityError::BundleExists(out_dir.to_owned()));
        }
        let identity = self.issue_identity(role, name)?;
        std::fs::create_dir_all(out_dir).map_err(|source| IdentityError::Write {
            path: out_dir.to_owned(),
            source,
        })?;
        write_private(&bundle.key(), identity.key_pem.as_bytes())?;
        write_public(&bundle.cert(), identity.cert_pem.as_bytes())?;
        write_public(&bundle.ca(), self.ca_pem.as_bytes())?;
        let root_public = read(&self.paths.root_public_key())?;
        write_public(&bundle.model_root_key(), root_public.as_bytes())?;
        Ok(bundle)
    }
}

/// A client certificate and its private key, in memory (PEM).
pub struct IssuedIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA certificate clients verify the coordinator with.
    pub ca_pem: String,
}

impl fmt::Debug for IssuedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("IssuedIdentity").finish_non_exhaustive()
    }
}

/// Files of a client bundle.
#[derive(Clone, Debug)]
pub struct BundlePaths {
    pub dir: PathBuf,
}

impl BundlePaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    /// The model root's public key: the only model trust anchor a node needs.
    pub fn model_root_key(&self) -> PathBuf {
        self.dir.join("model-root.pub.pem")
    }
}

fn create_ca(paths: &PkiPaths) -> Result<(), IdentityError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = distinguished_name("Backroom coordinator CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_private(&paths.ca_key(), key.serialize_pem().as_bytes())?;
    write_public(&paths.ca_cert(), cert.pem().as_bytes())
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Backroom");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_leaf_defaults(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(CERT_VALIDITY_DAYS);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn write_public(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    write_with_mode(path, bytes, 0o644)
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    write_with_mode(path, bytes, 0o600)
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let map = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(map)?;
    file.write_all(bytes).map_err(map)?;
    file.sync_all().map_err(map)
}
