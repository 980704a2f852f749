//! sslmode and rustls wiring: which certificates to trust, what to check, the client
//! certificate. (TLS failures are put into words by `diagnose`.)
//!
//! The crypto provider is always chosen explicitly (ring), so linking a second rustls
//! provider into the application never makes pglisten panic.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

mod verify;

use self::verify::LibpqVerifier;
use super::conninfo::{ConnInfo, RootCert, SslMode, TlsVersions};
use crate::error::{Error, ErrorKind, Result};

/// The ALPN protocol name of PostgreSQL's direct TLS connections.
const POSTGRESQL_ALPN: &[u8] = b"postgresql";

/// The crypto provider pglisten uses for the configurations it builds.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How the server's certificate is checked.
#[derive(Clone)]
enum Verify {
    /// Encrypt without checking who answers (`require` without `sslrootcert`, as libpq).
    Nothing,
    /// The chain must lead to one of these roots; the host name is not checked.
    Chain(Trust),
    /// The chain and the host name.
    Full(Trust),
}

/// What the server's certificate may chain to.
#[derive(Clone)]
struct Trust {
    store: Arc<RootCertStore>,
    /// The certificates of an `sslrootcert` file, as they are: a server presenting one
    /// of them is trusted without a chain (a pinned self-signed certificate).
    pinned: Arc<Vec<CertificateDer<'static>>>,
}

/// Everything needed to make the TLS configuration of one connection attempt.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    /// The application's own configuration, used as it is.
    user: Option<Arc<ClientConfig>>,
    /// Where the roots come from; a file is read again on every attempt, so a renewed
    /// bundle is picked up on reconnect.
    roots: Option<RootCert>,
    /// The platform's roots, loaded once.
    system: Option<Arc<RootCertStore>>,
    mode: SslMode,
    client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    sni: bool,
    versions: TlsVersions,
    /// `sslcrl` and `sslcrldir`: read again on every attempt, like the roots.
    crl_file: Option<std::path::PathBuf>,
    crl_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("custom_config", &self.user.is_some())
            .field("sslmode", &self.mode)
            .field("sslrootcert", &self.roots)
            .field(
                "client_certificate",
                &self.client_cert.as_ref().map(|(c, _)| c),
            )
            .finish()
    }
}

impl TlsSetup {
    /// Checks the TLS settings of `plan` (reading the files once, so a missing or
    /// broken file is reported before the first connection attempt).
    pub(crate) fn new(plan: &ConnInfo, user: Option<Arc<ClientConfig>>) -> Result<TlsSetup> {
        if user.is_some() {
            let conflicting: Vec<&str> = [
                ("sslrootcert", plan.sslrootcert.is_some()),
                ("sslcert", plan.sslcert.is_some()),
                ("sslkey", plan.sslkey.is_some()),
                ("sslcrl", plan.sslcrl.is_some()),
                ("sslcrldir", plan.sslcrldir.is_some()),
                (
                    "ssl_min_protocol_version/ssl_max_protocol_version",
                    plan.tls_versions != TlsVersions::ANY,
                ),
            ]
            .iter()
            .filter(|(_, set)| *set)
            .map(|(key, _)| *key)
            .collect();
            if !conflicting.is_empty() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "{} cannot be combined with ListenerBuilder::tls_config: put the root \
                         and client certificates into your rustls::ClientConfig, or drop \
                         tls_config",
                        conflicting.join(", ")
                    ),
                ));
            }
        } else if matches!(plan.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
            && plan.sslrootcert.is_none()
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "sslmode={} needs sslrootcert: the path of a PEM file with your server's \
                     root certificate(s) (your provider publishes one), or sslrootcert=system \
                     for the platform's trust store",
                    plan.sslmode
                ),
            ));
        }
        let system = match plan.sslrootcert {
            Some(RootCert::System) if user.is_none() => Some(Arc::new(system_roots()?)),
            _ => None,
        };
        let setup = TlsSetup {
            user,
            roots: plan.sslrootcert.clone(),
            system,
            mode: plan.sslmode,
            client_cert: plan.sslcert.clone().zip(plan.sslkey.clone()),
            sni: plan.sslsni,
            versions: plan.tls_versions,
            crl_file: plan.sslcrl.clone(),
            crl_dir: plan.sslcrldir.clone(),
        };
        setup.connector()?;
        Ok(setup)
    }

    /// The TLS connector for one attempt.
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect> {
        if let Some(user) = &self.user {
            let mut config = ClientConfig::clone(user);
            // Direct TLS (sslnegotiation=direct, PostgreSQL 17+) needs the ALPN protocol
            // `postgresql`; a configuration that names none gets it, as pglisten's own.
            if config.alpn_protocols.is_empty() {
                config.alpn_protocols = vec![POSTGRESQL_ALPN.to_vec()];
            }
            return Ok(MakeRustlsConnect::new(config));
        }
        let roots = match &self.roots {
            None => None,
            Some(RootCert::System) => self.system.clone().map(|store| Trust {
                store,
                pinned: Arc::default(),
            }),
            Some(RootCert::File(path)) => Some(file_roots(path)?),
        };
        let verify = match (roots, self.mode) {
            (None, _) => Verify::Nothing,
            (Some(roots), SslMode::VerifyFull) => Verify::Full(roots),
            // As libpq: with a root certificate, every other mode checks the chain.
            (Some(roots), _) => Verify::Chain(roots),
        };
        let provider = provider();
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
            (self.versions.tls12, &rustls::version::TLS12),
            (self.versions.tls13, &rustls::version::TLS13),
        ]
        .into_iter()
        .filter_map(|(allowed, version)| allowed.then_some(version))
        .collect();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Tls,
                    "the TLS library refused its own default protocol versions",
                    e,
                )
            })?;
        let check_name = matches!(verify, Verify::Full(_));
        let builder = match verify {
            Verify::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification { provider })),
            Verify::Chain(trust) | Verify::Full(trust) => {
                let verifier = LibpqVerifier {
                    webpki: webpki_verifier(trust.store, provider, self.revocation_lists()?)?,
                    pinned: trust.pinned,
                    check_name,
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
            }
        };
        let mut config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let (chain, key_der) = client_identity(cert, key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    Error::with_source(
                        ErrorKind::Config,
                        format!(
                            "sslcert {} and sslkey {} do not form a usable client \
                             certificate: {e}",
                            cert.display(),
                            key.display()
                        ),
                        e,
                    )
                })?
            }
        };
        config.enable_sni = self.sni;
        // Needed by servers that accept direct TLS (sslnegotiation=direct); ignored by
        // the others.
        config.alpn_protocols = vec![POSTGRESQL_ALPN.to_vec()];
        Ok(MakeRustlsConnect::new(config))
    }

    /// The revocation lists of `sslcrl` and `sslcrldir` (every file of the directory that
    /// holds one; OpenSSL's hashed names are not needed).
    fn revocation_lists(&self) -> Result<Vec<CertificateRevocationListDer<'static>>> {
        let mut lists = Vec::new();
        if let Some(file) = &self.crl_file {
            lists.extend(read_crls(file, "sslcrl")?);
        }
        if let Some(dir) = &self.crl_dir {
            let entries = std::fs::read_dir(dir).map_err(|e| {
                Error::with_source(
                    ErrorKind::Config,
                    format!(
                        "sslcrldir {} cannot be read: give a directory of PEM revocation lists",
                        dir.display()
                    ),
                    e,
                )
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_file() {
                    // Files that hold no list (an OpenSSL hash link's target aside) are
                    // skipped, as OpenSSL does.
                    lists.extend(read_crls(&path, "sslcrldir").unwrap_or_default());
                }
            }
        }
        Ok(lists)
    }

    /// Whether this setup logs in with a client certificate (`sslcert`).
    pub(crate) fn sends_client_cert(&self) -> bool {
        self.client_cert.is_some()
    }

    /// What the server certificate must chain to, in words.
    pub(crate) fn roots_in_words(&self) -> String {
        match (&self.user, &self.roots) {
            (Some(_), _) => "the roots of your tls_config".to_owned(),
            (None, Some(RootCert::System)) => {
                "the platform's trust store (sslrootcert=system)".to_owned()
            }
            (None, Some(RootCert::File(path))) => format!("sslrootcert {}", path.display()),
            (None, None) => "no root certificate".to_owned(),
        }
    }
}

fn webpki_verifier(
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let builder = WebPkiServerVerifier::builder_with_provider(roots, provider);
    let builder = if crls.is_empty() {
        builder
    } else {
        // As libpq (OpenSSL's CRL_CHECK_ALL): every certificate of the chain is checked,
        // and one whose issuer has no list is refused.
        builder.with_crls(crls)
    };
    builder.build().map_err(|e| {
        Error::with_source(
            ErrorKind::Config,
            format!("the root certificates cannot be used: {e}"),
            e,
        )
    })
}

/// The platform's trust store, through rustls-native-certs.
fn system_roots() -> Result<RootCertStore> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let detail = loaded
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "sslrootcert=system: no usable certificate was found in the platform's trust \
                 store{detail}; install the CA certificates package, or give the path of a \
                 PEM file"
            ),
        ));
    }
    Ok(roots)
}

/// The certificates of a PEM file, as trusted roots (and pinned certificates).
fn file_roots(path: &Path) -> Result<Trust> {
    let certs = read_certificates(path, "sslrootcert")?;
    let mut roots = RootCertStore::empty();
    for cert in certs.iter().cloned() {
        roots.add(cert).map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                format!(
                    "sslrootcert {} holds a certificate that cannot be used as a root: {e}",
                    path.display()
                ),
                e,
            )
        })?;
    }
    Ok(Trust {
        store: Arc::new(roots),
        pinned: Arc::new(certs),
    })
}

/// The PEM revocation lists in `path` (at least one).
fn read_crls(path: &Path, key: &str) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let unreadable = |detail: String| {
        Error::new(
            ErrorKind::Config,
            format!("{key} {} {detail}", path.display()),
        )
    };
    let lists: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_file_iter(path)
            .map_err(|e| unreadable(format!("cannot be read: {}", describe_pem_error(&e))))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| unreadable(format!("is not valid PEM: {}", describe_pem_error(&e))))?;
    if lists.is_empty() {
        return Err(unreadable(
            "holds no revocation list (-----BEGIN X509 CRL-----)".to_owned(),
        ));
    }
    Ok(lists)
}

fn read_certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let unreadable = |e: rustls::pki_types::pem::Error| {
        Error::with_source(
            ErrorKind::Config,
            format!(
                "could not read {key} {}: {}",
                path.display(),
                describe_pem_error(&e)
            ),
            e,
        )
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if certs.is_empty() {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{key} {} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The client certificate chain and its key. The key's contents never reach a message.
fn client_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = read_certificates(cert, "sslcert")?;
    check_key_file(key)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        let detail = match &e {
            rustls::pki_types::pem::Error::Io(io) => io.to_string(),
            rustls::pki_types::pem::Error::NoItemsFound => {
                "it holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\")".to_owned()
            }
            _ => "it is not a valid PEM private key".to_owned(),
        };
        Error::new(
            ErrorKind::Config,
            format!("could not read sslkey {}: {detail}", key.display()),
        )
    })?;
    Ok((chain, key_der))
}

/// libpq's checks on the private key file: private to its owner (or, owned by root,
/// readable by its group at most), and not encrypted (pglisten has no `sslpassword`).
fn check_key_file(key: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if let Ok(metadata) = std::fs::metadata(key) {
            let mode = metadata.permissions().mode();
            let allowed = if metadata.uid() == 0 { 0o640 } else { 0o600 };
            if mode & 0o777 & !allowed != 0 {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "sslkey {} may be read by others (permissions {:o}): as libpq, pglisten \
                         needs u=rw (0600) or less, or u=rw,g=r (0640) or less for a file \
                         owned by root; chmod 600 it",
                        key.display(),
                        mode & 0o777
                    ),
                ));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(key)
        && (text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || text.contains("Proc-Type: 4,ENCRYPTED"))
    {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "sslkey {} is encrypted, and pglisten cannot decrypt it (sslpassword is not \
                 supported): decrypt it once with `openssl pkey -in KEY -out PLAIN` and keep \
                 the result private (chmod 600)",
                key.display()
            ),
        ));
    }
    Ok(())
}

fn describe_pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        _ => "it is not a valid PEM file".to_owned(),
    }
}

/// `require` without a root certificate: encrypt, but accept any certificate. The
/// handshake signature is still checked, so the session key belongs to the certificate.
#[derive(Debug)]
struct NoVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerification {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_need_a_root_certificate() {
        for mode in ["verify-ca", "verify-full"] {
            let plan = ConnInfo::parse(&format!("user=u sslmode={mode}"), &[]).unwrap();
            let err = TlsSetup::new(&plan, None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains("sslrootcert"), "{err}");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let plan = ConnInfo::parse(
            "user=u sslmode=verify-ca sslrootcert=/nonexistent/ca.pem",
            &[],
        )
        .unwrap();
        let err = TlsSetup::new(&plan, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn custom_config_conflicts_with_file_keys() {
        let plan = ConnInfo::parse("user=u sslrootcert=/x.pem", &[]).unwrap();
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let err = TlsSetup::new(&plan, Some(Arc::new(config))).unwrap_err();
        assert!(err.to_string().contains("sslrootcert"), "{err}");
    }

    #[test]
    fn the_process_default_provider_is_never_used() {
        // A process default that cannot do anything: any configuration built from it
        // fails. pglisten's own provider is chosen explicitly, so it still works.
        let useless = CryptoProvider {
            cipher_suites: Vec::new(),
            kx_groups: Vec::new(),
            ..rustls::crypto::ring::default_provider()
        };
        let _ = useless.install_default();
        let plan = ConnInfo::parse("user=u sslmode=require", &[]).unwrap();
        TlsSetup::new(&plan, None).unwrap().connector().unwrap();
    }

    #[test]
    fn require_without_roots_builds() {
        let plan = ConnInfo::parse("user=u sslmode=require", &[]).unwrap();
        TlsSetup::new(&plan, None).unwrap();
    }
}
