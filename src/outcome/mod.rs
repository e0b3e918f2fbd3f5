//! The connection's vocabulary, below every layer that speaks it (the stages, the TLS server
//! side, metrics, `check`):
//! - here: what was done (`Action`), why (`Reason`), how a forwarded connection ended (`End`).
//!   `as_str()` is both the access-log field and the metric label, so the two never disagree.
//! - `record`: the one record every connection ends in.
//! - `client_text`: what a client sent, escaped for the access log.
//! - `strict_fate`: what a connection would have met under STRICT (the audit of §8.2).

pub mod client_text;
pub mod record;
pub mod strict_fate;

use serde::Serialize;

/// What peerguard did with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// mTLS terminated here; the app got the decrypted stream.
    Terminate,
    /// Bytes forwarded untouched.
    Passthrough,
    /// Closed without a byte to the app.
    Refuse,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Terminate, Action::Passthrough, Action::Refuse];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Terminate => "terminate",
            Action::Passthrough => "passthrough",
            Action::Refuse => "refuse",
        }
    }
}

/// Why a connection ended the way it did. One per connection; not an error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// mTLS handshake completed with a trusted mesh peer.
    Mtls,
    /// Plaintext on a PERMISSIVE port.
    PassthroughPlaintext,
    /// TLS without a mesh ALPN on a PERMISSIVE port: the app's own TLS.
    PassthroughTls,
    /// DISABLE port: forwarded without reading.
    PassthroughDisabled,
    /// PERMISSIVE port, the client sent nothing within the sniff timeout (server-first protocol).
    PassthroughServerFirst,
    /// Plaintext on a STRICT port.
    PlaintextOnStrict,
    /// ClientHello over `--max-client-hello`.
    ClientHelloTooLarge,
    /// TLS record header, but the ClientHello does not parse.
    ClientHelloMalformed,
    /// STRICT port, no byte within the sniff timeout.
    SniffTimeout,
    /// The client closed before its first bytes could be classified.
    ClientClosedEarly,
    /// The TLS handshake failed for a reason other than the client certificate.
    HandshakeFailed,
    /// The TLS handshake did not finish within `--handshake-timeout`.
    HandshakeTimeout,
    /// The client presented no certificate.
    ClientCertMissing,
    /// The client certificate does not chain to the mesh roots (or is expired, or unusable).
    ClientCertUntrusted,
    /// The client's CertificateVerify signature does not verify: it does not hold the key of
    /// the certificate it sent.
    ClientCertBadSignature,
    /// The client certificate chains to the mesh roots but carries no SPIFFE ID.
    ClientCertNoSpiffeId,
    /// The client certificate's SPIFFE ID is in another trust domain.
    ClientCertWrongTrustDomain,
    /// The app refused, or did not answer within the connect timeout.
    UpstreamConnectFailed,
    /// Connected to the app, but writing the bytes read while classifying to it failed.
    UpstreamReplayFailed,
    /// Still before the app (sniffing, handshaking, connecting) when the drain deadline came.
    Drained,
    /// An AuthorizationPolicy denies this peer (or no ALLOW policy admits it).
    DeniedByPolicy,
    /// The original destination is one of peerguard's own ports.
    OwnPort,
    /// A socket error while reading the first bytes.
    ClientIoError,
}

impl Reason {
    pub const ALL: [Reason; 23] = [
        Reason::Mtls,
        Reason::PassthroughPlaintext,
        Reason::PassthroughTls,
        Reason::PassthroughDisabled,
        Reason::PassthroughServerFirst,
        Reason::PlaintextOnStrict,
        Reason::ClientHelloTooLarge,
        Reason::ClientHelloMalformed,
        Reason::SniffTimeout,
        Reason::ClientClosedEarly,
        Reason::HandshakeFailed,
        Reason::HandshakeTimeout,
        Reason::ClientCertMissing,
        Reason::ClientCertUntrusted,
        Reason::ClientCertBadSignature,
        Reason::ClientCertNoSpiffeId,
        Reason::ClientCertWrongTrustDomain,
        Reason::UpstreamConnectFailed,
        Reason::UpstreamReplayFailed,
        Reason::Drained,
        Reason::DeniedByPolicy,
        Reason::OwnPort,
        Reason::ClientIoError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Mtls => "mtls",
            Reason::PassthroughPlaintext => "passthrough_plaintext",
            Reason::PassthroughTls => "passthrough_tls",
            Reason::PassthroughDisabled => "passthrough_disabled",
            Reason::PassthroughServerFirst => "passthrough_server_first",
            Reason::PlaintextOnStrict => "plaintext_on_strict",
            Reason::ClientHelloTooLarge => "client_hello_too_large",
            Reason::ClientHelloMalformed => "client_hello_malformed",
            Reason::SniffTimeout => "sniff_timeout",
            Reason::ClientClosedEarly => "client_closed_early",
            Reason::HandshakeFailed => "handshake_failed",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::ClientCertMissing => "client_cert_missing",
            Reason::ClientCertUntrusted => "client_cert_untrusted",
            Reason::ClientCertBadSignature => "client_cert_bad_signature",
            Reason::ClientCertNoSpiffeId => "client_cert_no_spiffe_id",
            Reason::ClientCertWrongTrustDomain => "client_cert_wrong_trust_domain",
            Reason::UpstreamConnectFailed => "upstream_connect_failed",
            Reason::UpstreamReplayFailed => "upstream_replay_failed",
            Reason::Drained => "drained",
            Reason::DeniedByPolicy => "denied_by_policy",
            Reason::OwnPort => "own_port",
            Reason::ClientIoError => "client_io_error",
        }
    }
}

/// How a forwarded connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides finished sending (each EOF was passed on as a half-close).
    Completed,
    /// No byte moved either way for `--idle-timeout`.
    IdleTimeout,
    /// A read or write on the client side failed (e.g. reset).
    ClientError,
    /// A read or write on the app side failed.
    AppError,
    /// The drain deadline passed with the connection still open.
    Drained,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Completed => "completed",
            End::IdleTimeout => "idle_timeout",
            End::ClientError => "client_error",
            End::AppError => "app_error",
            End::Drained => "drained",
        }
    }
}

/// How the client opened the connection, as far as peerguard saw: what STRICT would have
/// judged it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opening {
    /// Nothing was seen: the connection ended before a byte crossed either way.
    Unseen,
    /// The client sent nothing within the sniff timeout, or the app spoke first (a
    /// server-first protocol on a DISABLE port).
    ServerFirst,
    /// The first bytes are not a TLS handshake record.
    Plaintext,
    /// A TLS handshake record: on a port that reads first bytes, a whole ClientHello.
    Tls,
    /// A TLS handshake record that did not become a usable ClientHello (malformed, stalled, or
    /// over `--max-client-hello`).
    BrokenTls,
}

/// What crossed the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub to_app: u64,
    pub to_client: u64,
    pub end: End,
    /// What crossed first, as the copy loop saw it: the client's first byte (a TLS record or
    /// not), or the app's. Only a DISABLE port, whose first bytes are not read before
    /// forwarding, needs it; after termination it describes the decrypted stream.
    pub opening: Opening,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_unique_and_match_serde() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            assert!(seen.insert(reason.as_str()), "duplicate label {}", reason.as_str());
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
        for action in Action::ALL {
            assert_eq!(serde_json::to_value(action).unwrap(), action.as_str());
        }
    }
}
