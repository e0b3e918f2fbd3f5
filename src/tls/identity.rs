//! Workload identity: Istio's SPIFFE IDs, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
//! and reading them out of a certificate's URI SANs.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// An Istio workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not an Istio SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("`{0}` does not start with spiffe://")]
    Scheme(String),
    #[error("`{0}`: the trust domain must be non-empty lowercase letters, digits, `.`, `-` or `_`")]
    TrustDomain(String),
    #[error("`{0}`: the path must be /ns/<namespace>/sa/<service-account>")]
    Path(String),
    #[error("`{0}`: path segments must be letters, digits, `.`, `-` or `_`, and not `.` or `..`")]
    Segment(String),
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, SpiffeIdError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(uri.to_owned()))?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !is_trust_domain(trust_domain) {
            return Err(SpiffeIdError::TrustDomain(uri.to_owned()));
        }
        let mut segments = path.split('/');
        let (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(SpiffeIdError::Path(uri.to_owned()));
        };
        if !is_path_segment(namespace) || !is_path_segment(service_account) {
            return Err(SpiffeIdError::Segment(uri.to_owned()));
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }
}

/// A trust domain name, SPIFFE-ID spec §2.1: non-empty, lowercase letters, digits, `.`, `-`,
/// `_` (lowercase only, so that comparison is plain string equality). `cluster.local` is one;
/// `spiffe://cluster.local` is not.
pub fn is_trust_domain(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

/// SPIFFE-ID spec §2.2: `[A-Za-z0-9._-]+`, and not a relative-path segment.
fn is_path_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// The Istio SPIFFE IDs among a certificate's URI SANs, in certificate order. A certificate that
/// does not parse, or URIs that are not Istio SPIFFE IDs, contribute nothing.
pub fn spiffe_ids_of(cert: &CertificateDer<'_>) -> Vec<SpiffeId> {
    match X509Certificate::from_der(cert.as_ref()) {
        Ok((_, parsed)) => spiffe_ids_in(&parsed).collect(),
        Err(_) => Vec::new(),
    }
}

fn spiffe_ids_in<'a>(parsed: &'a X509Certificate<'_>) -> impl Iterator<Item = SpiffeId> + 'a {
    let names = match parsed.subject_alternative_name() {
        Ok(Some(san)) => &san.value.general_names[..],
        _ => &[],
    };
    names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) => uri.parse().ok(),
        _ => None,
    })
}

/// The certificate's SPIFFE ID in `trust_domain`, if it has one.
pub fn spiffe_id_in(cert: &CertificateDer<'_>, trust_domain: &str) -> Option<SpiffeId> {
    spiffe_ids_of(cert)
        .into_iter()
        .find(|id| id.trust_domain == trust_domain)
}

/// A verified peer certificate as the data path needs it: who, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Its SPIFFE ID in our trust domain, if it has one.
    pub id: Option<SpiffeId>,
    pub not_after: SystemTime,
}

/// Reads the SPIFFE ID in `trust_domain` and the expiry of `cert` in one parse; `None` if it
/// does not parse.
pub fn peer_certificate(cert: &CertificateDer<'_>, trust_domain: &str) -> Option<PeerCertificate> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let id = spiffe_ids_in(&parsed).find(|id| id.trust_domain == trust_domain);
    Some(PeerCertificate {
        id,
        not_after: not_after(&parsed),
    })
}

/// Seconds since the Unix epoch (0 for earlier times), as `/config_dump`, readiness and the
/// expiry metric show certificate times.
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A time as RFC 3339 in UTC (`2026-12-03T06:00:00Z`), as log lines show certificate dates.
pub struct Rfc3339(pub SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = time::OffsetDateTime::from(self.0)
            .replace_nanosecond(0)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        match time.format(&time::format_description::well_known::Rfc3339) {
            Ok(text) => f.write_str(&text),
            Err(_) => write!(f, "{} (Unix time)", unix_seconds(self.0)),
        }
    }
}

/// A certificate's `notBefore` (the epoch for a date before it).
pub fn not_before(parsed: &X509Certificate<'_>) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(parsed.validity().not_before.timestamp().max(0).unsigned_abs())
}

/// A certificate's `notAfter` (the epoch for a date before it).
pub fn not_after(parsed: &X509Certificate<'_>) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(parsed.validity().not_after.timestamp().max(0).unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_ids_round_trip() {
        let text = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let id: SpiffeId = text.parse().unwrap();
        assert_eq!(
            id,
            SpiffeId::new("cluster.local", "default", "bookinfo-productpage").unwrap()
        );
        assert_eq!(id.to_string(), text);
    }

    #[test]
    fn non_istio_uris_are_refused() {
        for (text, expected) in [
            ("https://cluster.local/ns/a/sa/b", "Scheme"),
            ("spiffe://Cluster.local/ns/a/sa/b", "TrustDomain"),
            ("spiffe:///ns/a/sa/b", "TrustDomain"),
            ("spiffe://td", "Path"),
            ("spiffe://td/ns/a/sa/b/c", "Path"),
            ("spiffe://td/sa/b/ns/a", "Path"),
            ("spiffe://td/ns//sa/b", "Segment"),
            ("spiffe://td/ns/../sa/b", "Segment"),
            ("spiffe://td/ns/a b/sa/b", "Segment"),
        ] {
            let err = text.parse::<SpiffeId>().unwrap_err();
            assert!(format!("{err:?}").starts_with(expected), "{text}: {err:?}");
        }
    }

    #[test]
    fn trust_domains_are_names_not_uris() {
        for name in ["cluster.local", "td", "mesh-1.example_org"] {
            assert!(is_trust_domain(name), "{name}");
        }
        for not_a_name in [
            "",
            "spiffe://cluster.local",
            "cluster.local/ns/a",
            "Cluster.local",
            "td:443",
        ] {
            assert!(!is_trust_domain(not_a_name), "{not_a_name}");
        }
    }

    #[test]
    fn garbage_certificates_have_no_ids() {
        assert!(spiffe_ids_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2])).is_empty());
    }
}
