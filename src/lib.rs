//! peerguard: an inbound L4 sidecar proxy that enforces Istio peer authentication.
//!
//! Layout:
//! - `cli`: command-line types.
//! - `check`: the `peerguard check` command: each port's mode, its source, and a decision.
//! - `policy`: PeerAuthentication (and legacy) parsing, validation and resolution.
//! - `tls`: ClientHello parser, workload credentials, rustls server configs, SPIFFE identity.
//! - `inbound`: the data path: classify -> decide -> terminate / forward / refuse -> outcome.
//! - `net`: socket plumbing: SO_ORIGINAL_DST, upstream source binding, listeners.
//! - `iptables`: the istio-iptables-compatible inbound capture rules: print, apply, clean.
#![forbid(unsafe_code)]

pub mod check;
pub mod cli;
pub mod inbound;
pub mod iptables;
pub mod net;
pub mod policy;
pub mod tls;
