//! TLS: the ClientHello parser, credentials, server configurations, peer identity.

pub mod client_hello;
pub mod identity;
