//! TLS: the ClientHello parser, credentials, server configurations and their ALPN choice, peer
//! identity, and the session store that bounds resumption.

pub(crate) mod alpn;
pub mod client_hello;
pub mod credentials;
pub mod identity;
pub mod server_config;
pub mod sessions;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The crypto provider every TLS object of peerguard is built with: ring, named explicitly so
/// that nothing depends on a process-wide default being installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
