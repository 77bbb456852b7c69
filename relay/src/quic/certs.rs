//! The operator's PKI: one private CA that issues the core's server certificates and one client
//! certificate per edge.
//!
//! Nothing here trusts the public web PKI. The operator generates a CA once
//! ([`generate_ca`]), keeps its key offline or on the core, and issues:
//! - a **core certificate** ([`issue_core_cert`]) naming every DNS name and IP address edges
//!   dial; usable only for TLS server authentication;
//! - an **edge certificate** per edge ([`issue_edge_cert`]) whose subject common name is the
//!   edge id and whose only DNS name is `<edge id>.edge.quarry`; usable only for TLS client
//!   authentication. The core reads the edge id back from it after the handshake
//!   ([`super::endpoint::peer_edge_id`]), so an edge cannot claim to be another.
//!
//! Because each certificate carries one extended key usage, an edge certificate cannot serve as
//! a core and the core's certificate cannot log in as an edge.
//!
//! Files are PEM. Private keys are written with mode 0600 (owner read/write only).

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::{Duration, OffsetDateTime};

use super::error::{QuicError, Result};

/// Every edge certificate's DNS name is `<edge id>.` followed by this.
pub const EDGE_DNS_SUFFIX: &str = "edge.quarry";

/// File name of the CA certificate written by [`CaBundle::write`].
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key written by [`CaBundle::write`].
pub const CA_KEY_FILE: &str = "ca.key";

/// How long the operator CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long core and edge certificates are valid.
const LEAF_VALIDITY: Duration = Duration::days(825);
/// Certificates start being valid a little in the past, so a peer whose clock is slightly behind
/// the issuer's does not reject a fresh certificate.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// Organization written into every certificate's subject.
const ORGANIZATION: &str = "Quarry";

/// The operator CA: its certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CaBundle {
    /// The CA certificate (what both ends trust).
    pub cert_pem: String,
    /// The CA private key (PKCS#8); whoever holds it can mint edges.
    pub key_pem: String,
}

/// A certificate issued by the operator CA with its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The leaf certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// Where [`write_files`] put a certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemPaths {
    /// The certificate file (`<stem>.crt`, mode 0644).
    pub cert: PathBuf,
    /// The private key file (`<stem>.key`, mode 0600).
    pub key: PathBuf,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Generates a new operator CA (ECDSA P-256) whose subject common name is `name`.
///
/// The CA may sign end-entity certificates only (path length 0) and is valid for ten years.
pub fn generate_ca(name: &str) -> Result<CaBundle> {
    let key = KeyPair::generate().map_err(QuicError::cert("generate CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY);
    let cert = params
        .self_signed(&key)
        .map_err(QuicError::cert("self-sign CA certificate"))?;
    Ok(CaBundle {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues the core's server certificate for `names`: DNS names (`core1.example.net`,
/// `localhost`) and IP addresses (`127.0.0.1`, `::1`), each becoming a subject alternative
/// name. The first name is also the subject common name. Edges must dial one of these names.
pub fn issue_core_cert(ca: &CaBundle, names: &[String]) -> Result<IssuedCert> {
    let Some(first) = names.first() else {
        return Err(QuicError::InvalidName {
            name: String::new(),
            reason: "a core certificate needs at least one DNS name or IP address".into(),
        });
    };
    let mut sans = Vec::with_capacity(names.len());
    for name in names {
        sans.push(core_san(name)?);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(first);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(ca, params, "sign core certificate")
}

/// Issues the client certificate of edge `edge_id`: common name `edge_id`, DNS name
/// `<edge_id>.edge.quarry` (see [`edge_dns_name`]).
///
/// `edge_id` must be a DNS label: 1 to 63 characters of `a-z`, `0-9` and `-`, not starting or
/// ending with `-` (see [`validate_edge_id`]).
pub fn issue_edge_cert(ca: &CaBundle, edge_id: &str) -> Result<IssuedCert> {
    validate_edge_id(edge_id)?;
    // Cannot fail after validation (ASCII only), but outside input never unwraps.
    let dns = rcgen::Ia5String::try_from(edge_dns_name(edge_id)).map_err(|_| {
        QuicError::InvalidEdgeId {
            id: edge_id.to_owned(),
            reason: "not an IA5 string",
        }
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(edge_id);
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue(ca, params, "sign edge certificate")
}

/// The DNS name an edge certificate carries: `<edge_id>.edge.quarry`.
pub fn edge_dns_name(edge_id: &str) -> String {
    format!("{edge_id}.{EDGE_DNS_SUFFIX}")
}

/// Checks that `edge_id` can name an edge in a certificate: a DNS label of 1 to 63 characters
/// from `a-z`, `0-9` and `-`, neither starting nor ending with `-` (RFC 1035 section 2.3.1,
/// lower case only so that one edge has exactly one spelling).
pub fn validate_edge_id(edge_id: &str) -> Result<()> {
    let invalid = |reason| {
        Err(QuicError::InvalidEdgeId {
            id: edge_id.to_owned(),
            reason,
        })
    };
    if edge_id.is_empty() {
        return invalid("empty");
    }
    if edge_id.len() > 63 {
        return invalid("longer than 63 characters (a DNS label)");
    }
    if !edge_id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("only a-z, 0-9 and '-' are allowed");
    }
    if edge_id.starts_with('-') || edge_id.ends_with('-') {
        return invalid("must not start or end with '-'");
    }
    Ok(())
}

impl CaBundle {
    /// The CA certificate as DER, ready for a rustls root store.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>> {
        parse_single_cert(&self.cert_pem, "CA certificate")
    }

    /// Writes `ca.crt` (0644) and `ca.key` (0600) into `dir`, creating `dir` if needed.
    pub fn write(&self, dir: &Path) -> Result<PemPaths> {
        write_pem_pair(
            &dir.join(CA_CERT_FILE),
            &self.cert_pem,
            &dir.join(CA_KEY_FILE),
            &self.key_pem,
        )
    }

    /// Loads a CA written by [`write`](Self::write) (or by another tool, as long as the key is
    /// PKCS#8) and checks that the key belongs to the certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let bundle = CaBundle {
            cert_pem: read_to_string(cert_path)?,
            key_pem: read_to_string(key_path)?,
        };
        bundle.signer()?;
        Ok(bundle)
    }

    /// Loads `ca.crt` and `ca.key` from `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        Self::load(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))
    }

    /// Rebuilds the rcgen issuer from the PEM: the CA's parameters (subject, key identifier)
    /// and its key pair, checked to match.
    fn signer(&self) -> Result<(rcgen::Certificate, KeyPair)> {
        let der = self.cert_der()?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| QuicError::Pem {
                what: "CA certificate".into(),
                reason: format!("not an X.509 certificate: {e}"),
            })?;
        if !parsed.is_ca() {
            return Err(QuicError::Pem {
                what: "CA certificate".into(),
                reason: "not a CA certificate (basicConstraints cA is not set)".into(),
            });
        }
        let key = KeyPair::from_pem(&self.key_pem).map_err(QuicError::cert("parse CA key"))?;
        if key.public_key_der() != parsed.public_key().raw {
            return Err(QuicError::CaKeyMismatch(format!(
                "certificate subject {}",
                parsed.subject()
            )));
        }
        let params = CertificateParams::from_ca_cert_der(&der)
            .map_err(QuicError::cert("parse CA certificate"))?;
        // Only the subject, key identifier and key usages of this re-signed copy are used to
        // sign; the original certificate (what peers trust) is left untouched.
        let issuer = params
            .self_signed(&key)
            .map_err(QuicError::cert("rebuild CA issuer"))?;
        Ok((issuer, key))
    }
}

impl IssuedCert {
    /// The certificate as a DER chain (leaf only), ready for rustls.
    pub fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>> {
        parse_cert_chain(&self.cert_pem, "issued certificate")
    }

    /// The private key as DER, ready for rustls.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>> {
        parse_private_key(&self.key_pem, "issued private key")
    }

    /// Writes `<stem>.crt` (0644) and `<stem>.key` (0600) into `dir`; see [`write_files`].
    pub fn write(&self, dir: &Path, stem: &str) -> Result<PemPaths> {
        write_files(dir, stem, &self.cert_pem, &self.key_pem)
    }
}

/// Writes `<stem>.crt` (mode 0644) and `<stem>.key` (mode 0600) into `dir`, creating `dir`
/// (mode 0700 if new) as needed. Each file is written to a temporary name and renamed into
/// place, so a reader never sees half a key, and an existing key file's looser mode is not
/// inherited.
pub fn write_files(dir: &Path, stem: &str, cert_pem: &str, key_pem: &str) -> Result<PemPaths> {
    if stem.is_empty() || stem.contains(['/', '\\']) || stem.starts_with('.') {
        return Err(QuicError::io(
            dir.join(stem),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "file stem must be a plain, non-hidden file name",
            ),
        ));
    }
    write_pem_pair(
        &dir.join(format!("{stem}.crt")),
        cert_pem,
        &dir.join(format!("{stem}.key")),
        key_pem,
    )
}

/// Loads a PEM certificate chain (leaf first). An empty file or one without a certificate is an
/// error naming the file.
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    parse_cert_chain(&read_to_string(path)?, &path.display().to_string())
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file. Warns (via `tracing`)
/// when the file can be read by users other than its owner.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    warn_if_key_readable_by_others(path);
    parse_private_key(&read_to_string(path)?, &path.display().to_string())
}

/// Parses every certificate of a PEM document; `what` names the source in errors.
pub fn parse_cert_chain(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| QuicError::Pem {
            what: what.to_owned(),
            reason: format!("bad PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(QuicError::Pem {
            what: what.to_owned(),
            reason: "no CERTIFICATE section".into(),
        });
    }
    Ok(chain)
}

/// Parses the first private key of a PEM document; `what` names the source in errors.
pub fn parse_private_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| QuicError::Pem {
        what: what.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section".into()
            }
            other => format!("bad PEM: {other}"),
        },
    })
}

fn parse_single_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>> {
    let mut chain = parse_cert_chain(pem, what)?;
    if chain.len() != 1 {
        return Err(QuicError::Pem {
            what: what.to_owned(),
            reason: format!("expected one certificate, found {}", chain.len()),
        });
    }
    Ok(chain.remove(0))
}

fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
}

fn core_san(name: &str) -> Result<SanType> {
    let invalid = |reason: String| QuicError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // The same check a connecting edge applies to the name it dials.
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => {}
        Ok(_) => return Err(invalid("not a DNS name".into())),
        Err(e) => return Err(invalid(e.to_string())),
    }
    rcgen::Ia5String::try_from(name)
        .map(SanType::DnsName)
        .map_err(|e| invalid(e.to_string()))
}

fn issue(ca: &CaBundle, mut params: CertificateParams, step: &'static str) -> Result<IssuedCert> {
    let (issuer, issuer_key) = ca.signer()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);
    let key = KeyPair::generate().map_err(QuicError::cert("generate key"))?;
    let cert = params
        .signed_by(&key, &issuer, &issuer_key)
        .map_err(QuicError::cert(step))?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn read_to_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| QuicError::io(path, e))
}

fn write_pem_pair(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key_pem: &str,
) -> Result<PemPaths> {
    if let Some(dir) = cert_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    // Key first: a certificate without its key is useless, a key without its certificate is
    // merely unfinished.
    write_atomically(key_path, key_pem, 0o600)?;
    write_atomically(cert_path, cert_pem, 0o644)?;
    Ok(PemPaths {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
    })
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| QuicError::io(dir, e))
}

fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        // A stale temporary file keeps its old mode on open; set it explicitly.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        QuicError::io(path, e)
    })
}

fn warn_if_key_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{mode:o}"),
                    "private key file is accessible to group or others; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pem: &str) -> Vec<u8> {
        parse_cert_chain(pem, "test").expect("pem")[0].to_vec()
    }

    #[test]
    fn edge_cert_carries_edge_id_as_common_name_and_dns_name() {
        let ca = generate_ca("Quarry test CA").expect("ca");
        let edge = issue_edge_cert(&ca, "farm-7").expect("edge");
        let der = parse(&edge.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().expect("utf8"))
            .collect();
        assert_eq!(cn, ["farm-7"]);
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert_eq!(
            san.value.general_names,
            [x509_parser::extensions::GeneralName::DNSName(
                "farm-7.edge.quarry"
            )]
        );
        assert!(!cert.is_ca());
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn core_cert_lists_dns_names_and_ip_addresses() {
        let ca = generate_ca("Quarry test CA").expect("ca");
        let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
        let core = issue_core_cert(&ca, &names).expect("core");
        let der = parse(&core.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert_eq!(san.value.general_names.len(), 3);
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.server_auth && !eku.client_auth);
        // Issued by the CA: issuer name equals the CA's subject, byte for byte.
        let ca_der = parse(&ca.cert_pem);
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).expect("x509");
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        assert!(cert.verify_signature(Some(ca_cert.public_key())).is_ok());
    }

    #[test]
    fn bad_edge_ids_are_refused_with_the_reason() {
        let ca = generate_ca("Quarry test CA").expect("ca");
        for (id, reason) in [
            ("", "empty"),
            ("Farm7", "only a-z"),
            ("farm.7", "only a-z"),
            ("farm 7", "only a-z"),
            ("-farm", "start or end"),
            ("farm-", "start or end"),
            ("é", "only a-z"),
        ] {
            let err = issue_edge_cert(&ca, id).expect_err(id).to_string();
            assert!(err.contains(reason), "{id:?}: {err}");
        }
        let long = "a".repeat(64);
        assert!(issue_edge_cert(&ca, &long).is_err());
        assert!(issue_edge_cert(&ca, &"a".repeat(63)).is_ok());
    }

    #[test]
    fn bad_core_names_are_refused() {
        let ca = generate_ca("Quarry test CA").expect("ca");
        assert!(issue_core_cert(&ca, &[]).is_err());
        let err = issue_core_cert(&ca, &["bad name!".to_owned()]).expect_err("refused");
        assert!(err.to_string().contains("bad name!"), "{err}");
    }

    #[test]
    fn files_round_trip_with_private_key_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        let ca = generate_ca("Quarry test CA").expect("ca");
        let ca_paths = ca.write(&pki).expect("write ca");
        let edge = issue_edge_cert(&ca, "e1").expect("edge");
        let paths = edge.write(&pki, "e1").expect("write edge");
        assert_eq!(paths.key, pki.join("e1.key"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&ca_paths.key), 0o600);
            assert_eq!(mode(&paths.key), 0o600);
            assert_eq!(mode(&paths.cert), 0o644);
            assert_eq!(mode(&pki), 0o700);
        }
        let loaded = CaBundle::load_dir(&pki).expect("load ca");
        assert_eq!(loaded.cert_pem, ca.cert_pem);
        assert_eq!(load_cert_chain(&paths.cert).expect("chain").len(), 1);
        assert!(load_private_key(&paths.key).is_ok());
        // Overwriting keeps 0600 even if someone loosened the old file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&paths.key, fs::Permissions::from_mode(0o644)).expect("chmod");
            let again = edge.write(&pki, "e1").expect("rewrite");
            let mode = fs::metadata(&again.key).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.crt");
        let err = load_cert_chain(&missing).expect_err("missing").to_string();
        assert!(err.contains("nope.crt"), "{err}");

        let empty = dir.path().join("empty.crt");
        fs::write(&empty, "not pem at all\n").expect("write");
        let err = load_cert_chain(&empty).expect_err("empty").to_string();
        assert!(
            err.contains("empty.crt") && err.contains("no CERTIFICATE"),
            "{err}"
        );
        let err = load_private_key(&empty).expect_err("no key").to_string();
        assert!(
            err.contains("empty.crt") && err.contains("PRIVATE KEY"),
            "{err}"
        );
    }

    #[test]
    fn ca_with_someone_elses_key_is_refused() {
        let a = generate_ca("A").expect("a");
        let b = generate_ca("B").expect("b");
        let mixed = CaBundle {
            cert_pem: a.cert_pem.clone(),
            key_pem: b.key_pem.clone(),
        };
        let err = issue_edge_cert(&mixed, "e1").expect_err("mismatch");
        assert!(matches!(err, QuicError::CaKeyMismatch(_)), "{err}");
    }

    #[test]
    fn a_leaf_cannot_act_as_ca() {
        let ca = generate_ca("A").expect("a");
        let edge = issue_edge_cert(&ca, "e1").expect("edge");
        let fake = CaBundle {
            cert_pem: edge.cert_pem,
            key_pem: edge.key_pem,
        };
        let err = issue_edge_cert(&fake, "e2")
            .expect_err("not a CA")
            .to_string();
        assert!(err.contains("not a CA"), "{err}");
    }

    #[test]
    fn debug_output_hides_private_keys() {
        let ca = generate_ca("A").expect("a");
        let shown = format!("{ca:?}");
        assert!(!shown.contains("PRIVATE KEY") && shown.contains("redacted"));
    }
}
