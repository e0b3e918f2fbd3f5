//! decide: (mode, what the first bytes were, ALPN rules) -> what to do, and why.
//!
//! Pure: no sockets, no clocks. `peerguard check` calls this same function, so what `check`
//! reports is what the proxy does.

use crate::inbound::classify::Sniffed;
use crate::outcome::{Action, Reason};
use crate::policy::MtlsMode;

/// The verdict on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: Reason,
}

/// ALPN protocol IDs that mark a peer sidecar: Istio's markers, always.
const ISTIO_ALPNS: [&[u8]; 5] = [
    b"istio",
    b"istio-peer-exchange",
    b"istio-http/1.0",
    b"istio-http/1.1",
    b"istio-h2",
];
/// Standard HTTP ALPNs, mesh markers only where the `http-alpns.aspenmesh.io` annotation is on.
const HTTP_ALPNS: [&[u8]; 3] = [b"http/1.0", b"http/1.1", b"h2"];

/// Whether one offered ALPN protocol ID marks a mesh peer (exact, case-sensitive).
pub fn is_mesh_alpn(protocol: &[u8], http_alpn: bool) -> bool {
    ISTIO_ALPNS.contains(&protocol) || (http_alpn && HTTP_ALPNS.contains(&protocol))
}

/// The first column of the decision table: whether a port's connections are read before
/// deciding. DISABLE ports forward at once (server-first protocols work); the rest classify.
pub fn reads_first_bytes(mode: MtlsMode) -> bool {
    mode != MtlsMode::Disable
}

/// The decision table (docs/connections.md#the-decision-table).
pub fn decide(mode: MtlsMode, sniffed: &Sniffed, http_alpn: bool) -> Decision {
    use Action::{Passthrough, Refuse, Terminate};
    let (action, reason) = match (mode, sniffed) {
        (MtlsMode::Disable, _) => (Passthrough, Reason::PassthroughDisabled),

        (MtlsMode::Strict, Sniffed::Tls(_)) => (Terminate, Reason::Mtls),
        (MtlsMode::Strict, Sniffed::Plaintext) => (Refuse, Reason::PlaintextOnStrict),
        (MtlsMode::Strict, Sniffed::Silent | Sniffed::Stalled | Sniffed::NotRead) => (Refuse, Reason::SniffTimeout),
        (MtlsMode::Strict, Sniffed::Malformed) => (Refuse, Reason::ClientHelloMalformed),

        (MtlsMode::Permissive, Sniffed::Tls(hello)) => {
            if hello.alpn.iter().any(|p| is_mesh_alpn(p, http_alpn)) {
                (Terminate, Reason::Mtls)
            } else {
                (Passthrough, Reason::PassthroughTls)
            }
        }
        (MtlsMode::Permissive, Sniffed::Plaintext) => (Passthrough, Reason::PassthroughPlaintext),
        (MtlsMode::Permissive, Sniffed::Silent | Sniffed::NotRead) => (Passthrough, Reason::PassthroughServerFirst),
        // As Envoy does when its TLS inspector times out: no TLS was recognised, so the bytes
        // go on as they are.
        (MtlsMode::Permissive, Sniffed::Stalled) => (Passthrough, Reason::SniffTimeout),
        (MtlsMode::Permissive, Sniffed::Malformed) => (Passthrough, Reason::ClientHelloMalformed),

        (_, Sniffed::TooLarge) => (Refuse, Reason::ClientHelloTooLarge),
    };
    Decision { action, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::client_hello::ClientHello;

    fn hello(alpns: &[&str]) -> Sniffed {
        Sniffed::Tls(ClientHello {
            sni: Some("app.default.svc.cluster.local".into()),
            alpn: alpns.iter().map(|a| a.as_bytes().to_vec()).collect(),
        })
    }

    fn verdict(mode: MtlsMode, sniffed: &Sniffed, http_alpn: bool) -> (Action, Reason) {
        let d = decide(mode, sniffed, http_alpn);
        (d.action, d.reason)
    }

    #[test]
    fn strict_terminates_all_tls_and_refuses_the_rest() {
        use MtlsMode::Strict;
        assert_eq!(
            verdict(Strict, &Sniffed::Plaintext, false),
            (Action::Refuse, Reason::PlaintextOnStrict)
        );
        assert_eq!(
            verdict(Strict, &hello(&["istio"]), false),
            (Action::Terminate, Reason::Mtls)
        );
        assert_eq!(
            verdict(Strict, &hello(&["h2", "http/1.1"]), false),
            (Action::Terminate, Reason::Mtls)
        );
        assert_eq!(verdict(Strict, &hello(&[]), false), (Action::Terminate, Reason::Mtls));
        assert_eq!(
            verdict(Strict, &Sniffed::Silent, false),
            (Action::Refuse, Reason::SniffTimeout)
        );
        assert_eq!(
            verdict(Strict, &Sniffed::Malformed, false),
            (Action::Refuse, Reason::ClientHelloMalformed)
        );
        assert_eq!(
            verdict(Strict, &Sniffed::TooLarge, false),
            (Action::Refuse, Reason::ClientHelloTooLarge)
        );
    }

    #[test]
    fn permissive_terminates_only_mesh_alpns() {
        use MtlsMode::Permissive;
        for marker in [
            "istio",
            "istio-peer-exchange",
            "istio-http/1.0",
            "istio-http/1.1",
            "istio-h2",
        ] {
            assert_eq!(
                verdict(Permissive, &hello(&["h2", marker]), false),
                (Action::Terminate, Reason::Mtls),
                "{marker}"
            );
        }
        assert_eq!(
            verdict(Permissive, &Sniffed::Plaintext, false),
            (Action::Passthrough, Reason::PassthroughPlaintext)
        );
        assert_eq!(
            verdict(Permissive, &hello(&["h2", "http/1.1"]), false),
            (Action::Passthrough, Reason::PassthroughTls)
        );
        assert_eq!(
            verdict(Permissive, &hello(&[]), false),
            (Action::Passthrough, Reason::PassthroughTls)
        );
        assert_eq!(
            verdict(Permissive, &Sniffed::Silent, false),
            (Action::Passthrough, Reason::PassthroughServerFirst)
        );
        assert_eq!(
            verdict(Permissive, &Sniffed::Malformed, false),
            (Action::Passthrough, Reason::ClientHelloMalformed)
        );
        assert_eq!(
            verdict(Permissive, &Sniffed::TooLarge, false),
            (Action::Refuse, Reason::ClientHelloTooLarge)
        );
    }

    #[test]
    fn mesh_alpn_match_is_exact_and_case_sensitive() {
        use MtlsMode::Permissive;
        for not_a_marker in ["ISTIO", "istio ", "istio-http/2", "istio-", "xistio"] {
            assert_eq!(
                verdict(Permissive, &hello(&[not_a_marker]), false).0,
                Action::Passthrough,
                "{not_a_marker}"
            );
        }
    }

    #[test]
    fn http_alpn_annotation_makes_standard_http_alpns_mesh_markers() {
        use MtlsMode::Permissive;
        for alpn in ["http/1.0", "http/1.1", "h2"] {
            assert_eq!(
                verdict(Permissive, &hello(&[alpn]), true),
                (Action::Terminate, Reason::Mtls),
                "{alpn}"
            );
            assert_eq!(
                verdict(Permissive, &hello(&[alpn]), false),
                (Action::Passthrough, Reason::PassthroughTls),
                "{alpn}"
            );
        }
        assert_eq!(
            verdict(Permissive, &hello(&["spdy/3", "acme-tls/1"]), true),
            (Action::Passthrough, Reason::PassthroughTls)
        );
        assert_eq!(
            verdict(Permissive, &Sniffed::Plaintext, true),
            (Action::Passthrough, Reason::PassthroughPlaintext)
        );
    }

    #[test]
    fn disable_passes_everything_through() {
        use MtlsMode::Disable;
        for sniffed in [
            Sniffed::NotRead,
            Sniffed::Plaintext,
            hello(&["istio"]),
            hello(&["h2"]),
            Sniffed::Malformed,
            Sniffed::Silent,
            Sniffed::Stalled,
            Sniffed::TooLarge,
        ] {
            for http_alpn in [false, true] {
                assert_eq!(
                    verdict(Disable, &sniffed, http_alpn),
                    (Action::Passthrough, Reason::PassthroughDisabled),
                    "{sniffed:?}"
                );
            }
        }
    }
}
