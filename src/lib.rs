//! peerguard: an inbound L4 sidecar proxy that enforces Istio peer authentication.
//!
//! Layout:
//! - `cli`: command-line types; `config`: the validated configuration of `run`.
//! - `app`: start-up, listeners, drain.
//! - `admin`: the admin and health endpoints (config dump, metrics, readiness) and their small
//!   HTTP server.
//! - `metrics`: the Prometheus metric families.
//! - `strict_audit`: what STRICT would do to the connections of PERMISSIVE and DISABLE ports.
//! - `reload`: hot reload of policy, certificates and the labels file on change or SIGHUP.
//! - `cluster`: the Kubernetes API as a policy source (watch, validate, publish).
//! - `mesh_ca`: the workload certificate from the mesh CA (Istio's gRPC CA service), renewed.
//! - `policy`: PeerAuthentication (and legacy) parsing, validation and resolution.
//! - `store`: the live policy and credentials: loaded, validated, last good kept, published.
//! - `outcome`: the connection's vocabulary (action, reason, the record, log escaping).
//! - `inbound`: the data path: classify -> decide -> terminate / forward / refuse -> record.
//! - `tls`: ClientHello parser, workload credentials, rustls server configs, SPIFFE identity.
//! - `net`: socket options, original destination, upstream source binding.
//! - `check`, `tls_check`, `audit`, `certs`, `dev-ca`, `demo`, `iptables`: the other subcommands.
#![forbid(unsafe_code)]

mod admin;
pub mod app;
pub mod audit;
pub mod certs;
pub mod check;
pub mod cli;
pub mod cluster;
mod columns;
pub mod config;
pub mod demo;
pub mod dev_ca;
pub mod inbound;
pub mod iptables;
pub mod mesh_ca;
mod metrics;
pub mod net;
pub mod outcome;
pub mod policy;
mod reload;
pub mod store;
pub mod strict_audit;
pub mod tls;
pub mod tls_check;
