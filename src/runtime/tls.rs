//! Cluster certificates and the TLS configurations of the QUIC endpoints.
//!
//! mTLS is the default: a cluster CA (`certs init`) signs one certificate per node
//! (`certs node`), per operator (`certs admin`) and per client (`certs client`). A node
//! accepts a peer or a client only if its certificate chains to the cluster CA; it reaches a
//! peer only if the peer's certificate does, and names `node-<id>` among its SANs. ALPN
//! tells peer traffic (`nodedb-peer/1`) from client traffic (`nodedb-client/1`).
//!
//! **Roles.** Each certificate carries its holder's [`Role`] as a URI SAN:
//! `urn:nodedb:node:<id>`, `urn:nodedb:admin:<name>` or `urn:nodedb:client:<name>`
//! ([`role_of`]). Only a node certificate may speak the peer protocol, as the node it
//! names; admin operations need an admin or node certificate. A certificate without a role
//! URI (issued before roles existed) is a client's. A DNS SAN never grants a role: a client
//! could be issued one named `node-1`.
//!
//! **Validity.** Certificates are valid for `CERT_VALIDITY_DAYS` (a year) from issue, the CA
//! for `CA_VALIDITY_DAYS`; rotation is a new certificate from the same CA and a restart of
//! the process that uses it (`certs node|admin|client` again).
//!
//! The explicit insecure mode encrypts but authenticates nobody; it exists for development,
//! is logged as a warning at start and shows in metrics. It is never the default.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use thiserror::Error;

use crate::constants::{CA_VALIDITY_DAYS, CERT_VALIDITY_DAYS};
use crate::ids::{NodeId, Role};

/// ALPN of node-to-node traffic.
pub const ALPN_PEER: &[u8] = b"nodedb-peer/1";
/// ALPN of client traffic.
pub const ALPN_CLIENT: &[u8] = b"nodedb-client/1";

/// File names inside a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

/// A certificate or TLS configuration problem.
#[derive(Debug, Error)]
pub enum TlsError {
    /// Generating a key or certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A PEM file holds no certificate or key of the expected kind.
    #[error("{path}: {what}")]
    BadPem { path: PathBuf, what: String },
    /// rustls refused the configuration (e.g. a key that does not match its certificate).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// A SAN is neither an IP address nor a DNS name.
    #[error("invalid subject alternative name {0:?}")]
    BadSan(String),
    /// The client verifier could not be built from the CA.
    #[error("cannot verify clients against the cluster CA: {0}")]
    Verifier(String),
    /// A certificate does not parse, or names more than one role.
    #[error("certificate: {0}")]
    BadCertificate(String),
    /// A private key file others may read.
    #[error(
        "{path}: the private key is readable by other users (mode {mode:o}); run `chmod 600` on it"
    )]
    KeyExposed { path: PathBuf, mode: u32 },
}

/// PEM text of a certificate and its private key.
#[derive(Clone)]
pub struct CertifiedKeyPem {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Sets a certificate valid from yesterday (clock skew between machines) for `days`.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Creates a new cluster CA.
pub fn generate_ca(cluster_name: &str) -> Result<CertifiedKeyPem, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    set_validity(&mut params, CA_VALIDITY_DAYS);
    params.distinguished_name = name(&format!("{cluster_name} cluster CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok(CertifiedKeyPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues the certificate of node `node`: the node role, SAN `node-<id>` plus `sans` (IPs
/// or DNS names), usable both as a server (peers and clients reach it) and as a client (it
/// reaches peers).
pub fn issue_node_cert(
    ca: &CertifiedKeyPem,
    node: NodeId,
    sans: &[String],
) -> Result<CertifiedKeyPem, TlsError> {
    let mut all = vec![node_server_name(node)];
    all.extend(sans.iter().cloned());
    issue(
        ca,
        &format!("node {node}"),
        Role::Node(node),
        &node.0.to_string(),
        &all,
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )
}

/// Issues a client certificate named `client`.
pub fn issue_client_cert(ca: &CertifiedKeyPem, client: &str) -> Result<CertifiedKeyPem, TlsError> {
    issue(
        ca,
        client,
        Role::Client,
        client,
        &[client.to_owned()],
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )
}

/// Issues an operator's certificate named `admin`: a client that may also run the cluster.
pub fn issue_admin_cert(ca: &CertifiedKeyPem, admin: &str) -> Result<CertifiedKeyPem, TlsError> {
    issue(
        ca,
        admin,
        Role::Admin,
        admin,
        &[admin.to_owned()],
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )
}

/// The URI SAN that carries `role` for the holder `name`.
fn role_uri(role: Role, name: &str) -> String {
    match role {
        Role::Node(_) => format!("{ROLE_URI_PREFIX}node:{name}"),
        Role::Admin => format!("{ROLE_URI_PREFIX}admin:{name}"),
        Role::Client => format!("{ROLE_URI_PREFIX}client:{name}"),
    }
}

const ROLE_URI_PREFIX: &str = "urn:nodedb:";

/// The role a certificate chain's end-entity certificate carries; `None` when the chain is
/// empty (the insecure mode authenticates nobody). A certificate without a role URI is a
/// client's; one with two role URIs, or a node role without a node id, is refused.
pub fn role_of(chain: &[Vec<u8>]) -> Result<Option<Role>, TlsError> {
    let Some(der) = chain.first() else {
        return Ok(None);
    };
    let bad = |e: String| TlsError::BadCertificate(e);
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?;
    let mut roles = Vec::new();
    for name in sans.iter().flat_map(|s| s.value.general_names.iter()) {
        let x509_parser::extensions::GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(rest) = uri.strip_prefix(ROLE_URI_PREFIX) else {
            continue;
        };
        let role = match rest.split_once(':') {
            Some(("node", id)) => Role::Node(NodeId(
                id.parse()
                    .map_err(|_| bad(format!("node role without a node id: {uri}")))?,
            )),
            Some(("admin", _)) => Role::Admin,
            Some(("client", _)) => Role::Client,
            _ => return Err(bad(format!("unknown role {uri}"))),
        };
        roles.push(role);
    }
    match roles.as_slice() {
        [] => Ok(Some(Role::Client)),
        [role] => Ok(Some(*role)),
        _ => Err(bad(format!("a certificate with several roles: {roles:?}"))),
    }
}

/// The DNS-style name a node's certificate carries and peers verify: `node-<id>`.
pub fn node_server_name(node: NodeId) -> String {
    format!("node-{}", node.0)
}

/// The server name to connect with when any node of the cluster will do and its id is not
/// known yet (`start --join HOST:PORT`): the server's certificate must chain to the
/// cluster CA, carry a node role, and be valid for `node-<id>` of the id it names.
pub const ANY_NODE_SERVER_NAME: &str = "nodedb-any-node";

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "nodedb-cluster");
    dn
}

fn issue(
    ca: &CertifiedKeyPem,
    common_name: &str,
    role: Role,
    holder: &str,
    sans: &[String],
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<CertifiedKeyPem, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca.cert_pem)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.subject_alt_names = sans
        .iter()
        .map(|san| match san.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) if is_dns_name(san) => san
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| TlsError::BadSan(san.clone())),
            Err(_) => Err(TlsError::BadSan(san.clone())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let uri = role_uri(role, holder)
        .try_into()
        .map_err(|_| TlsError::BadSan(holder.to_owned()))?;
    params.subject_alt_names.push(SanType::URI(uri));
    set_validity(&mut params, CERT_VALIDITY_DAYS);
    params.extended_key_usages = usages.to_vec();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(CertifiedKeyPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A DNS name as certificates carry it: dot-separated labels of letters, digits and
/// hyphens (RFC 1123), 1–63 characters each, 253 in all.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Writes `<dir>/<stem>.pem` and `<dir>/<stem>.key` (the key readable by its owner only).
pub fn write_pem_pair(
    dir: &Path,
    stem: &str,
    pair: &CertifiedKeyPem,
) -> Result<(PathBuf, PathBuf), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    write_file(&cert_path, pair.cert_pem.as_bytes(), 0o644)?;
    write_file(&key_path, pair.key_pem.as_bytes(), 0o600)?;
    Ok((cert_path, key_path))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    // Create with the final mode so a key is never readable by others, even briefly.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // An existing file keeps its old mode on open: set it explicitly.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads a PEM pair written by [`write_pem_pair`].
pub fn read_pem_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKeyPem, TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(key_path)
        .map_err(|source| TlsError::Io {
            path: key_path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(TlsError::KeyExposed {
            path: key_path.to_owned(),
            mode: mode & 0o777,
        });
    }
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })
    };
    Ok(CertifiedKeyPem {
        cert_pem: read(cert_path)?,
        key_pem: read(key_path)?,
    })
}

/// What an endpoint presents and trusts.
#[derive(Clone)]
pub enum TlsMode {
    /// Mutual TLS against the cluster CA (the default).
    Mutual {
        ca_cert_pem: String,
        identity: CertifiedKeyPem,
    },
    /// Encrypted but unauthenticated. Development only; must be asked for explicitly.
    Insecure,
}

impl TlsMode {
    pub fn is_insecure(&self) -> bool {
        matches!(self, TlsMode::Insecure)
    }

    /// The cluster's id: a 64-bit FNV-1a digest of the CA certificate (its DER bytes), so
    /// every node and client configured with one CA derives the same id without being told;
    /// 0 in insecure mode. An id, not a secret: the CA is what authenticates.
    pub fn cluster_id(&self) -> Result<u64, TlsError> {
        let TlsMode::Mutual { ca_cert_pem, .. } = self else {
            return Ok(0);
        };
        let ca = parse_certs(ca_cert_pem, "ca_cert")?;
        Ok(crate::cluster::vshard::fnv1a64(&ca[0]))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadPem {
            path: PathBuf::from(what),
            what: format!("unreadable certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            path: PathBuf::from(what),
            what: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn parse_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::BadPem {
        path: PathBuf::from(what),
        what: format!("no usable private key: {e}"),
    })
}

fn roots(ca_cert_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_cert_pem, "cluster CA")? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// The server side of an endpoint: presents the node certificate, requires a client
/// certificate from the cluster CA (mutual mode), offers both ALPNs.
pub fn server_config(mode: &TlsMode) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match mode {
        TlsMode::Mutual {
            ca_cert_pem,
            identity,
        } => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots(ca_cert_pem)?, provider())
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    parse_certs(&identity.cert_pem, "node certificate")?,
                    parse_key(&identity.key_pem, "node key")?,
                )?
        }
        TlsMode::Insecure => {
            let key = KeyPair::generate()?;
            let cert = CertificateParams::new(vec!["insecure".to_owned()])?.self_signed(&key)?;
            let key =
                PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::BadPem {
                    path: PathBuf::from("generated key"),
                    what: e.to_owned(),
                })?;
            builder
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key)?
        }
    };
    config.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_CLIENT.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// The client side of an endpoint: trusts only the cluster CA and presents `identity`
/// (mutual mode), speaking `alpn`.
pub fn client_config(mode: &TlsMode, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match mode {
        TlsMode::Mutual {
            ca_cert_pem,
            identity,
        } => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier::new(ca_cert_pem)?))
            .with_client_auth_cert(
                parse_certs(&identity.cert_pem, "certificate")?,
                parse_key(&identity.key_pem, "key")?,
            )?,
        TlsMode::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// A client that presents no certificate (used to test that such a client is refused).
pub fn client_config_without_certificate(
    ca_cert_pem: &str,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_cert_pem)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// The mutual mode's server verifier: webpki against the cluster CA for the name asked;
/// for [`ANY_NODE_SERVER_NAME`], for the name of the node the certificate's role names.
#[derive(Debug)]
struct ClusterServerVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl ClusterServerVerifier {
    fn new(ca_cert_pem: &str) -> Result<ClusterServerVerifier, TlsError> {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots(ca_cert_pem)?,
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(ClusterServerVerifier(inner))
    }
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let any_node =
            matches!(server_name, ServerName::DnsName(n) if n.as_ref() == ANY_NODE_SERVER_NAME);
        if !any_node {
            return self.0.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        let role =
            role_of(&[end_entity.to_vec()]).map_err(|e| rustls::Error::General(e.to_string()))?;
        let Some(Role::Node(node)) = role else {
            return Err(rustls::Error::General(
                "the server's certificate is not a node's".into(),
            ));
        };
        let name = ServerName::try_from(node_server_name(node))
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        self.0
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The insecure mode's server verifier: checks signatures, trusts any certificate.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_chain_to_the_cluster_ca_and_build_configs() {
        let ca = generate_ca("test").unwrap();
        let node =
            issue_node_cert(&ca, NodeId(3), &["127.0.0.1".into(), "db3.example".into()]).unwrap();
        let mode = TlsMode::Mutual {
            ca_cert_pem: ca.cert_pem.clone(),
            identity: node,
        };
        server_config(&mode).unwrap();
        client_config(&mode, ALPN_PEER).unwrap();
        assert!(matches!(
            issue_node_cert(&ca, NodeId(1), &["not a name!".into()]),
            Err(TlsError::BadSan(_))
        ));
    }

    fn der(pem: &str) -> Vec<Vec<u8>> {
        parse_certs(pem, "test")
            .unwrap()
            .into_iter()
            .map(|c| c.to_vec())
            .collect()
    }

    #[test]
    fn certificates_carry_their_role_and_a_finite_validity() {
        let ca = generate_ca("test").unwrap();
        let node = issue_node_cert(&ca, NodeId(7), &[]).unwrap();
        let admin = issue_admin_cert(&ca, "ops").unwrap();
        let client = issue_client_cert(&ca, "node-1").unwrap();
        assert_eq!(
            role_of(&der(&node.cert_pem)).unwrap(),
            Some(Role::Node(NodeId(7)))
        );
        assert_eq!(role_of(&der(&admin.cert_pem)).unwrap(), Some(Role::Admin));
        assert_eq!(
            role_of(&der(&client.cert_pem)).unwrap(),
            Some(Role::Client),
            "a client named like a node is a client"
        );
        assert_eq!(role_of(&[]).unwrap(), None);
        assert!(role_of(&[b"garbage".to_vec()]).is_err());
        let chain = der(&node.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, i64::from(CERT_VALIDITY_DAYS) + 1);
    }

    #[test]
    fn garbage_pem_is_a_typed_error() {
        let ca = generate_ca("test").unwrap();
        let mode = TlsMode::Mutual {
            ca_cert_pem: "not pem".into(),
            identity: CertifiedKeyPem {
                cert_pem: ca.cert_pem.clone(),
                key_pem: ca.key_pem.clone(),
            },
        };
        assert!(matches!(server_config(&mode), Err(TlsError::BadPem { .. })));
    }
}
