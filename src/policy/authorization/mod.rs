//! Istio `AuthorizationPolicy` at L4: who may connect (docs/authorization.md), as the Istio sidecar
//! enforces it on an inbound TCP connection (istiod's TCP RBAC builder,
//! pilot/pkg/security/authz/builder/builder.go and model/).
//!
//! API, for the data path:
//! - `PolicySet::authorizer(&Workload, trust_domain) -> Authorizer`: once per policy generation
//!   (and workload). It selects the policies that apply to the workload and compiles their rules.
//! - `Authorizer::verdict(&ConnectionFacts) -> Verdict`: once per connection, after the peer is
//!   known (after the handshake, after classifying, or at accept on DISABLE ports). Pure and
//!   allocation-free: the policy label in a verdict is an `Arc<str>` made at compile time.
//! - `Verdict`: `allowed`, the deciding policy and rule (`decider`), `reason`, the dry-run
//!   (`shadow_deny`, `shadow_allow`) and `audit` results to log and count.
//! - `Authorizer::policies()`: the policies in force, for `/config_dump`.
//!
//! Layout:
//! - `model`: one validated policy (parse and Istio's validation).
//! - `address`: IP/CIDR blocks.
//! - `compile`: a policy's rules as matchers over `ConnectionFacts`.
//! - `verdict`: `Authorizer` (selection, order) and `Verdict`.

mod address;
mod compile;
pub(crate) mod model;
mod verdict;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use crate::tls::identity::SpiffeId;

pub use model::Action;
pub use verdict::{Authorizer, Decider, PolicyInForce, Shadow, Verdict, VerdictReason};

/// What is known about one connection when it is authorized.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFacts<'a> {
    /// The verified mTLS peer; `None` for plaintext and passed-through TLS (no identity).
    pub peer: Option<&'a SpiffeId>,
    /// The client address; `None` when not known (`check` without `--source-ip`).
    pub source_ip: Option<IpAddr>,
    /// The original destination or listener address.
    pub destination_ip: Option<IpAddr>,
    /// The workload port.
    pub port: u16,
    /// The ClientHello's SNI, if any.
    pub sni: Option<&'a str>,
}
