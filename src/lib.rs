//! peerguard: an inbound L4 sidecar proxy that enforces Istio peer authentication.
//!
//! Layout:
//! - `certs`: a development mesh CA and workload certificates (`peerguard certs`).
//! - `cli`: command-line types.
//! - `policy`: PeerAuthentication (and legacy) parsing, validation and resolution.
//! - `tls`: ClientHello parser, workload credentials, rustls server configs, SPIFFE identity.
//! - `inbound`: the data path: classify -> decide -> terminate / forward / refuse -> outcome.
#![forbid(unsafe_code)]

pub mod certs;
pub mod cli;
pub mod inbound;
pub mod policy;
pub mod tls;
