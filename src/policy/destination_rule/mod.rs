//! DestinationRule (`networking.istio.io` v1alpha3, v1beta1, v1): the client side of mTLS, as
//! `tls-check` explains it (docs/tls-check.md).
//!
//! - `model`: the validated rule (fields checked fail-closed, as every kind's are).
//! - `resolve`: which rule sets a client's TLS to a Service port (the three pools).
//! - `status`: whether client and server agree.
//! - `pair`: both sides of every Service port of a policy set.

mod model;
mod pair;
mod resolve;
mod status;
#[cfg(test)]
mod tests;

pub use model::ClientTls;
pub(crate) use model::DestinationRule;
pub use pair::{TlsPair, TlsQuery, UnknownServicePort};
pub use resolve::{ClientRule, Pool};
pub use status::TlsStatus;
