//! Which ALPN protocol the server selects when it terminates mTLS
//! (docs/connections.md#which-alpn-a-terminated-connection-gets). peerguard forwards the
//! decrypted bytes and cannot translate between protocols, so it may only select what the app
//! speaks: the port's declared protocol decides, and when nothing declares it HTTP/1.1 goes
//! before h2, because an app that only speaks HTTP/1.1 answers h2's preface with an error,
//! while an h2 app is reached by any client that offers only `h2`. Pure.

use crate::policy::AppProtocol;

/// Every protocol the server may ever select. Istio's mesh markers (`istio`,
/// `istio-peer-exchange`, ...) are deliberately absent: they describe the connection, they are
/// not a protocol the app speaks.
pub const SELECTABLE: [&[u8]; 3] = [b"h2", b"http/1.1", b"http/1.0"];

/// The protocol to select for a client that offered `offered` (ClientHello order, which does
/// not matter: the server's preference decides), on a port that speaks `protocol`; `None`
/// negotiates no ALPN and the handshake goes on.
pub fn select(offered: &[Vec<u8>], protocol: AppProtocol) -> Option<&'static [u8]> {
    let preference: &[&'static [u8]] = match protocol {
        AppProtocol::Http1 => &[b"http/1.1", b"http/1.0"],
        AppProtocol::Http2 => &[b"h2"],
        // Opaque to peerguard: no HTTP protocol fits.
        AppProtocol::Tcp => &[],
        AppProtocol::Unknown => &[b"http/1.1", b"http/1.0", b"h2"],
    };
    preference
        .iter()
        .copied()
        .find(|wanted| offered.iter().any(|o| o.as_slice() == *wanted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use AppProtocol::{Http1, Http2, Tcp, Unknown};

    fn offered(alpns: &[&str]) -> Vec<Vec<u8>> {
        alpns.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn the_selection_table_of_the_spec() {
        let curl = ["h2", "http/1.1"];
        let envoy = ["istio-peer-exchange", "istio", "istio-http/1.1", "http/1.1"];
        let cases: &[(&[&str], AppProtocol, Option<&str>)] = &[
            // Unknown: http/1.1, then http/1.0, then h2 only when nothing else fits.
            (&curl, Unknown, Some("http/1.1")),
            (&["http/1.0", "h2"], Unknown, Some("http/1.0")),
            (&["http/1.0", "http/1.1"], Unknown, Some("http/1.1")),
            (&["h2"], Unknown, Some("h2")),
            (&["istio", "h2"], Unknown, Some("h2")),
            (&envoy, Unknown, Some("http/1.1")),
            (&["istio"], Unknown, None),
            (&[], Unknown, None),
            // HTTP/1.1 app: never h2.
            (&curl, Http1, Some("http/1.1")),
            (&["http/1.0"], Http1, Some("http/1.0")),
            (&["h2"], Http1, None),
            (&["istio", "istio-h2"], Http1, None),
            // HTTP/2 app: only h2.
            (&curl, Http2, Some("h2")),
            (&["http/1.1", "h2"], Http2, Some("h2")),
            (&["h2"], Http2, Some("h2")),
            (&["http/1.1", "http/1.0"], Http2, None),
            (&envoy, Http2, None),
            // Opaque TCP: nothing.
            (&curl, Tcp, None),
            (&envoy, Tcp, None),
            (&["h2"], Tcp, None),
        ];
        for (alpns, protocol, expected) in cases {
            assert_eq!(
                select(&offered(alpns), *protocol),
                expected.map(str::as_bytes),
                "{alpns:?} on a {protocol} port"
            );
        }
    }

    #[test]
    fn mesh_markers_and_case_variants_are_never_selected() {
        let markers = offered(&[
            "istio",
            "istio-peer-exchange",
            "istio-http/1.0",
            "istio-http/1.1",
            "istio-h2",
        ]);
        let variants = offered(&["H2", "HTTP/1.1", "http/1.1 "]);
        for protocol in [Http1, Http2, Tcp, Unknown] {
            assert_eq!(select(&markers, protocol), None);
            assert_eq!(select(&variants, protocol), None);
        }
    }

    #[test]
    fn whatever_is_selected_is_selectable() {
        let all = offered(&["h2", "http/1.1", "http/1.0", "istio"]);
        for protocol in [Http1, Http2, Tcp, Unknown] {
            if let Some(selected) = select(&all, protocol) {
                assert!(SELECTABLE.contains(&selected));
            }
        }
    }
}
