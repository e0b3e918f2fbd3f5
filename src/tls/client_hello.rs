//! A pure TLS ClientHello parser: SNI and ALPN out of the first bytes of a connection.

/// What a ClientHello offered, as far as peerguard cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// server_name (host_name), if offered.
    pub sni: Option<String>,
    /// ALPN protocol IDs, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}
