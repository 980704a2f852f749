//! TLS failures in words: the rustls error behind a failed handshake, by its type.

use rustls::{AlertDescription, CertificateError};

use crate::connect::tls::TlsSetup;

/// The rustls error somewhere in `err`'s chain (tokio-rustls wraps it in an
/// `io::Error`, whose `source()` skips it).
fn find_rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// A name as rustls presents it (`DnsName("db.example.com")`, `IpAddress(10.0.0.1)`),
/// without the decoration.
fn plain_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

/// If `err` is a TLS failure, what went wrong and what to do, in words. `host` is the
/// name the certificate was checked against.
pub(super) fn explain_tls(
    err: &tokio_postgres::Error,
    host: &str,
    setup: &TlsSetup,
) -> Option<String> {
    let found = find_rustls_error(err)?;
    let roots = setup.roots_in_words();
    let sent_cert = setup.sends_client_cert();
    Some(match found {
        rustls::Error::InvalidCertificate(cert_error) => match cert_error {
            CertificateError::NotValidForName => format!(
                "the server certificate is not valid for host \"{host}\"; connect with the name \
                 the certificate was issued for (sslmode=verify-full checks it)"
            ),
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "the server certificate is not valid for host \"{host}\" (it names {}); connect \
                 with one of those names (sslmode=verify-full checks it)",
                presented
                    .iter()
                    .map(|name| plain_name(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            CertificateError::UnknownIssuer => format!(
                "unknown certificate authority: the server certificate does not chain to \
                 {roots}; set sslrootcert to the CA bundle your database provider publishes"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server certificate has expired; the server needs a renewed certificate \
                 (or check this machine's clock)"
                    .to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server certificate is not valid yet; check this machine's clock".to_owned()
            }
            CertificateError::Revoked => "the server certificate has been revoked".to_owned(),
            CertificateError::BadSignature => {
                "the server certificate has an invalid signature".to_owned()
            }
            _ => "the server certificate was refused".to_owned(),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied
                if sent_cert =>
            {
                format!(
                    "the server did not accept the client certificate (sslcert): it answered \
                     \"{alert:?}\"; the certificate must be signed by a CA the server trusts \
                     (its ssl_ca_file)"
                )
            }
            AlertDescription::CertificateRequired => {
                "the server requires a client certificate: set sslcert and sslkey".to_owned()
            }
            AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion => format!(
                "the server refused the TLS handshake (\"{alert:?}\"): no TLS version or cipher \
                 in common (pglisten needs TLS 1.2 or newer)"
            ),
            other => format!("the server ended the TLS handshake with \"{other:?}\""),
        },
        rustls::Error::PeerIncompatible(detail) => {
            format!("the server's TLS is not compatible: {detail:?}")
        }
        _ => "the TLS handshake failed".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_lose_their_decoration() {
        assert_eq!(plain_name("DnsName(\"db.example.com\")"), "db.example.com");
        assert_eq!(plain_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(plain_name("other"), "other");
    }
}
