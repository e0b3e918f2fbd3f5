//! peerguard: an inbound L4 sidecar proxy that enforces Istio peer authentication.
#![forbid(unsafe_code)]

pub mod certs;
pub mod check;
pub mod cli;
pub mod inbound;
pub mod iptables;
pub mod net;
pub mod policy;
pub mod tls;
