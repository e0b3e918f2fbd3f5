//! The harness's command line (after `cargo bench --bench load --`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Whole-proxy load: the app direct, through peerguard, HAProxy and nginx, in one run.
#[derive(Debug, Parser)]
#[command(name = "load")]
pub struct Options {
    /// Seconds each timed phase runs, per target.
    #[arg(long, default_value = "2")]
    pub seconds: f64,
    /// Runs; the table shows the median of each figure.
    #[arg(long, default_value = "3")]
    pub runs: usize,
    /// Phases to run (all by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Phase>,
    /// Idle connections held open by the memory phases.
    #[arg(long, default_value = "2000")]
    pub idle_connections: usize,
    /// Concurrent clients of the handshake and new-connection phases.
    #[arg(long, default_value = "16")]
    pub concurrency: usize,
    /// Connections of the concurrent request/response phases.
    #[arg(long, default_value = "32")]
    pub rr_connections: usize,
    /// The peerguard binary under test (`cargo build --release` makes it).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/peerguard"))]
    pub peerguard: PathBuf,
    /// A policy file for peerguard instead of the built-in one (namespace `bench`, workload
    /// `app=bench`), e.g. with AuthorizationPolicies, to compare runs with and without.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Leave HAProxy out even when `haproxy` is on PATH.
    #[arg(long)]
    pub no_haproxy: bool,
    /// Leave nginx out even when `nginx` is on PATH.
    #[arg(long)]
    pub no_nginx: bool,
    /// Internal: run as the plain rustls server of the handshake ceiling, listening on this
    /// address with the credentials of `--rustls-cert-dir` (the harness starts it pinned).
    #[arg(long, hide = true, requires = "rustls_cert_dir")]
    pub rustls_server: Option<std::net::SocketAddr>,
    #[arg(long, hide = true)]
    pub rustls_cert_dir: Option<PathBuf>,
    /// `cargo bench` passes this to every bench; without it (`cargo test --all-targets` runs
    /// benches as tests) the harness only says how to run it.
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl Options {
    pub fn phase_time(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    pub fn phases(&self) -> Vec<Phase> {
        if self.only.is_empty() {
            Phase::value_variants().to_vec()
        } else {
            self.only.clone()
        }
    }
}

/// One kind of load. Memory phases come first so each proxy is measured fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Phase {
    /// The proxy's resident memory once it listens, before any connection.
    StartRss,
    /// Idle plaintext connections: proxy RSS per connection.
    IdlePlaintext,
    /// Idle mTLS connections (handshake done): proxy RSS per connection.
    IdleMtls,
    /// One plaintext connection streaming to a discarding app.
    Plaintext,
    /// One TLS connection (ALPN h2) passed through to the app, which terminates it.
    Tls,
    /// One mTLS connection (ALPN istio) terminated by the proxy.
    Mtls,
    /// 128 B request/response over one plaintext connection.
    RrPlaintext,
    /// 128 B request/response over one mTLS connection.
    RrMtls,
    /// 128 B request/response over `--rr-connections` plaintext connections at once.
    RrConcurrentPlaintext,
    /// 128 B request/response over `--rr-connections` mTLS connections at once.
    RrConcurrentMtls,
    /// Full mTLS handshakes (no resumption) from concurrent clients.
    Handshakes,
    /// New plaintext connections (connect, 4 bytes echoed, close) from concurrent clients.
    Connections,
}
