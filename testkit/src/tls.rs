//! Test certificates made at run time with `rcgen` (feature `tls`): a certificate
//! authority, server certificates for chosen names, and client certificates for
//! `cert` authentication. Nothing is read from or written to disk here; put the PEM
//! text where it is needed, for example with [`ClusterBuilder::tls`] and
//! [`ClusterBuilder::file`].
//!
//! ```no_run
//! use pglisten_testkit::{Cluster, tls::TestCa};
//!
//! let ca = TestCa::new("pglisten test CA")?;
//! let server = ca.server_cert(&["localhost", "127.0.0.1"])?;
//! let cluster = Cluster::builder()
//!     .tls(&ca, &server)
//!     .file("client/root.crt", ca.cert_pem().as_bytes())
//!     .start()?;
//! let root = cluster.data_dir().join("client/root.crt");
//! let url = format!(
//!     "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
//!     cluster.port(),
//!     root.display()
//! );
//! # let _ = url;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd, string::Ia5String,
};

use crate::ClusterBuilder;

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> io::Error + '_ {
    move |e| io::Error::other(format!("generating {what}: {e}"))
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertAndKey {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// The PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A throwaway certificate authority (ECDSA P-256), valid from 1975 to 4096.
pub struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// Creates a new CA whose certificate has the common name `name`.
    ///
    /// # Errors
    ///
    /// If key generation or signing fails.
    pub fn new(name: &str) -> io::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::new()).map_err(rcgen_error("CA params"))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(rcgen_error("CA key"))?;
        let cert = params.self_signed(&key).map_err(rcgen_error("CA"))?;
        Ok(TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM: what a client trusts (`sslrootcert`), and what the
    /// server trusts for client certificates (`ssl_ca_file`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses, as subject
    /// alternative names), signed by this CA.
    ///
    /// # Errors
    ///
    /// If a name is invalid, or key generation or signing fails.
    pub fn server_cert(&self, names: &[&str]) -> io::Result<CertAndKey> {
        self.sign(
            server_params(names, "pglisten test server")?,
            "server certificate",
        )
    }

    /// A server certificate that names its host only in the subject's common name, with
    /// no subject alternative name (as many older or hand-made certificates do), signed
    /// by this CA.
    ///
    /// # Errors
    ///
    /// If key generation or signing fails.
    pub fn server_cert_cn_only(&self, common_name: &str) -> io::Result<CertAndKey> {
        self.sign(server_params(&[], common_name)?, "server certificate")
    }

    /// A server certificate whose subject alternative names are all dNSNames, even
    /// those that spell an IP address (`"127.0.0.1"` as a dNSName, which libpq matches
    /// against an address host), signed by this CA.
    ///
    /// # Errors
    ///
    /// If a name is not ASCII, or key generation or signing fails.
    pub fn server_cert_dns_names(&self, names: &[&str]) -> io::Result<CertAndKey> {
        let mut params = server_params(&[], "pglisten test server")?;
        for name in names {
            let dns = Ia5String::try_from(*name).map_err(rcgen_error("dNSName"))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        self.sign(params, "server certificate")
    }

    /// A server certificate for `names` with the serial number `serial`, signed by this
    /// CA, and this CA's certificate revocation list (PEM) that revokes it when
    /// `revoked` (else the list is empty): for `sslcrl` tests.
    ///
    /// # Errors
    ///
    /// If a name is invalid, or key generation or signing fails.
    pub fn server_cert_and_crl(
        &self,
        names: &[&str],
        serial: u64,
        revoked: bool,
    ) -> io::Result<(CertAndKey, String)> {
        let mut params = server_params(names, "pglisten test server")?;
        params.serial_number = Some(SerialNumber::from(serial));
        let server = self.sign(params, "server certificate")?;
        let revoked_certs = if revoked {
            vec![RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: date_time_ymd(2000, 1, 1),
                reason_code: None,
                invalidity_date: None,
            }]
        } else {
            Vec::new()
        };
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2000, 1, 1),
            next_update: date_time_ymd(4000, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .map_err(rcgen_error("revocation list"))?;
        let crl_pem = crl.pem().map_err(rcgen_error("revocation list PEM"))?;
        Ok((server, crl_pem))
    }

    /// A client certificate for `cert` authentication as `user` (its common name),
    /// signed by this CA.
    ///
    /// # Errors
    ///
    /// If key generation or signing fails.
    pub fn client_cert(&self, user: &str) -> io::Result<CertAndKey> {
        let mut params =
            CertificateParams::new(Vec::new()).map_err(rcgen_error("client params"))?;
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, "client certificate")
    }

    fn sign(&self, params: CertificateParams, what: &str) -> io::Result<CertAndKey> {
        let key = KeyPair::generate().map_err(rcgen_error(what))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_error(what))?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A server certificate's parameters: `names` as subject alternative names (DNS names
/// or IP addresses), `common_name` in the subject, for server authentication.
fn server_params(names: &[&str], common_name: &str) -> io::Result<CertificateParams> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).map_err(rcgen_error("server params"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// A self-signed server certificate as PostgreSQL's documentation makes one
/// (`openssl req -new -x509 -subj "/CN=..."`): a CA certificate (CA:TRUE) that names its
/// host only in the common name, with no subject alternative name. Clients trust it by
/// giving the certificate itself as `sslrootcert`.
///
/// # Errors
///
/// If key generation or signing fails.
pub fn self_signed_server(common_name: &str) -> io::Result<CertAndKey> {
    let mut params = CertificateParams::new(Vec::new()).map_err(rcgen_error("params"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().map_err(rcgen_error("key"))?;
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_error("self-signed certificate"))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl ClusterBuilder {
    /// Turns TLS on: `ssl = on` with `server` as the server's certificate and key, and
    /// `ca` as `ssl_ca_file`, so `cert` authentication accepts client certificates
    /// signed by it. Combine with [`hba`](Self::hba) `hostssl` lines to require TLS.
    pub fn tls(self, ca: &TestCa, server: &CertAndKey) -> Self {
        self.setting("ssl", "on")
            .setting("ssl_cert_file", "server.crt")
            .setting("ssl_key_file", "server.key")
            .setting("ssl_ca_file", "root.crt")
            .file("server.crt", server.cert_pem.as_bytes())
            .file("server.key", server.key_pem.as_bytes())
            .file("root.crt", ca.cert_pem().as_bytes())
    }
}
