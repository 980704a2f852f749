//! The server certificate checks of `verify-ca` and `verify-full` as libpq makes them,
//! where WebPKI (rustls's verifier) is stricter than libpq:
//!
//! - A self-signed server certificate given as `sslrootcert` (the recipe of
//!   PostgreSQL's documentation: CA:TRUE, a common name, no subject alternative name) is
//!   trusted as it is, as OpenSSL trusts a certificate found in its trust store; WebPKI
//!   refuses a CA certificate as a server's.
//! - Host names (`verify-full`) follow libpq: the subject alternative names (dNSName,
//!   with a `*.` wildcard for one label, and iPAddress for an address), and the common
//!   name when there is no dNSName (nor, for an address, iPAddress) to look at; an
//!   address also matches a dNSName or common name that spells it.
//!
//! Everything else (chain, validity, key usage, signatures) is WebPKI's.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The names a server certificate answers to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct CertNames {
    pub(super) dns: Vec<String>,
    pub(super) ips: Vec<IpAddr>,
    pub(super) common_name: Option<String>,
}

impl CertNames {
    /// Reads them from a certificate; `None` if it cannot be parsed.
    pub(super) fn of(cert: &[u8]) -> Option<CertNames> {
        let (_, cert) = X509Certificate::from_der(cert).ok()?;
        let mut names = CertNames::default();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.dns.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            names.ips.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        names.common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Some(names)
    }

    /// libpq's rule: does `host` (as written in the connection string) match?
    pub(super) fn match_host(&self, host: &str) -> bool {
        let address: Option<IpAddr> = host.parse().ok();
        if self.dns.iter().any(|name| name_matches(name, host)) {
            return true;
        }
        if let Some(address) = address
            && self.ips.contains(&address)
        {
            return true;
        }
        // The common name counts only when no alternative name of the host's kind does.
        let check_common_name = self.dns.is_empty() && (address.is_none() || self.ips.is_empty());
        check_common_name
            && self
                .common_name
                .as_deref()
                .is_some_and(|cn| name_matches(cn, host))
    }

    /// Every name, for messages: `db.example.com, 10.0.0.1, CN=db`.
    pub(super) fn in_words(&self) -> Vec<String> {
        let mut words: Vec<String> = self.dns.clone();
        words.extend(self.ips.iter().map(IpAddr::to_string));
        if let Some(cn) = &self.common_name {
            words.push(format!("CN={cn}"));
        }
        words
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// A certificate name against a host: equal ignoring ASCII case, or a `*.` wildcard
/// standing for exactly one label. A name with a NUL never matches.
fn name_matches(name: &str, host: &str) -> bool {
    if name.contains('\0') {
        return false;
    }
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = name.strip_prefix('*') else {
        return false;
    };
    if !suffix.starts_with('.') || host.len() <= suffix.len() {
        return false;
    }
    let (label, rest) = host.split_at(host.len() - suffix.len());
    rest.eq_ignore_ascii_case(suffix) && !label.contains('.') && host.parse::<IpAddr>().is_err()
}

/// `verify-ca` (`check_name: false`) and `verify-full`, as libpq checks them.
#[derive(Debug)]
pub(super) struct LibpqVerifier {
    pub(super) webpki: Arc<WebPkiServerVerifier>,
    /// The certificates of `sslrootcert`: one presented by the server as it is is
    /// trusted without a chain.
    pub(super) pinned: Arc<Vec<CertificateDer<'static>>>,
    pub(super) check_name: bool,
}

impl LibpqVerifier {
    fn is_pinned(&self, cert: &CertificateDer<'_>) -> bool {
        self.pinned.iter().any(|p| p.as_ref() == cert.as_ref())
    }
}

/// The host as the connection string gave it.
fn host_text(server_name: &ServerName<'_>) -> String {
    match server_name {
        ServerName::DnsName(name) => name.as_ref().to_owned(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // Chain and name as WebPKI reads them: libpq would accept it too.
            Ok(verified) => return Ok(verified),
            // The chain is good (WebPKI checks the name last); libpq's name rules decide.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            // The server presents a certificate of sslrootcert itself: trusted as it is,
            // within its validity.
            Err(_) if self.is_pinned(end_entity) => check_validity(end_entity, now)?,
            Err(other) => return Err(other),
        }
        if !self.check_name {
            return Ok(ServerCertVerified::assertion());
        }
        let host = host_text(server_name);
        let names = CertNames::of(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        if names.match_host(&host) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForNameContext {
                    expected: server_name.to_owned(),
                    presented: names.in_words(),
                },
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A pinned certificate must still be within its validity period.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = parsed.validity();
    if now < validity.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > validity.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dns: &[&str], ips: &[&str], cn: Option<&str>) -> CertNames {
        CertNames {
            dns: dns.iter().map(|s| (*s).to_owned()).collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            common_name: cn.map(str::to_owned),
        }
    }

    #[test]
    fn wildcards_stand_for_one_label() {
        assert!(name_matches("*.example.com", "db.example.com"));
        assert!(name_matches("*.EXAMPLE.com", "DB.example.COM"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("*example.com", "dbexample.com"));
        assert!(!name_matches("db\0.example.com", "db"));
    }

    #[test]
    fn the_common_name_counts_only_without_dns_names() {
        let cn_only = names(&[], &[], Some("db.example.com"));
        assert!(cn_only.match_host("db.example.com"));
        assert!(!cn_only.match_host("other.example.com"));
        let with_san = names(&["san.example.com"], &[], Some("db.example.com"));
        assert!(with_san.match_host("san.example.com"));
        assert!(!with_san.match_host("db.example.com"));
        // An iPAddress name does not hide the common name from a DNS host...
        let ip_san = names(&[], &["10.0.0.1"], Some("db.example.com"));
        assert!(ip_san.match_host("db.example.com"));
        // ...but does from an address.
        let ip_and_cn = names(&[], &["10.0.0.1"], Some("10.0.0.2"));
        assert!(!ip_and_cn.match_host("10.0.0.2"));
    }

    #[test]
    fn an_address_matches_an_ip_name_a_dns_name_or_a_common_name_spelling_it() {
        assert!(names(&[], &["127.0.0.1"], None).match_host("127.0.0.1"));
        assert!(names(&[], &["::1"], None).match_host("::1"));
        assert!(names(&["127.0.0.1"], &[], None).match_host("127.0.0.1"));
        assert!(names(&[], &[], Some("127.0.0.1")).match_host("127.0.0.1"));
        assert!(!names(&[], &["127.0.0.2"], None).match_host("127.0.0.1"));
        // A wildcard never stands for part of an address.
        assert!(!names(&["*.0.0.1"], &[], None).match_host("127.0.0.1"));
    }

    #[test]
    fn names_in_words_list_every_kind() {
        let all = names(&["db.example.com"], &["10.0.0.1"], Some("db"));
        assert_eq!(all.in_words(), ["db.example.com", "10.0.0.1", "CN=db"]);
    }
}
