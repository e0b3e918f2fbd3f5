//! One phase against one target: which load, which figures it yields, and the proxy's CPU use
//! while it ran.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::host::Watched;
use crate::load::{self, Connector, Security};
use crate::options::{Options, Phase};
use crate::proxies::{Target, TargetKind};

/// A figure the report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    PlaintextGbps,
    TlsGbps,
    MtlsGbps,
    RrPlaintextP50,
    RrPlaintextP99,
    RrMtlsP50,
    RrMtlsP99,
    HandshakesPerSecond,
    /// Handshakes per second of the proxy's own CPU time: its capacity, even when the load
    /// generator (one core) cannot saturate it.
    HandshakesPerCpuSecond,
    ConnectionsPerSecond,
    /// Proxy CPU per 1,000 new plaintext connections, in core-milliseconds.
    CpuPerThousandConnectionsMs,
    IdlePlaintextKib,
    IdleMtlsKib,
}

impl Metric {
    /// The phase that measures it.
    pub fn phase(self) -> Phase {
        match self {
            Metric::PlaintextGbps => Phase::Plaintext,
            Metric::TlsGbps => Phase::Tls,
            Metric::MtlsGbps => Phase::Mtls,
            Metric::RrPlaintextP50 | Metric::RrPlaintextP99 => Phase::RrPlaintext,
            Metric::RrMtlsP50 | Metric::RrMtlsP99 => Phase::RrMtls,
            Metric::HandshakesPerSecond | Metric::HandshakesPerCpuSecond => Phase::Handshakes,
            Metric::ConnectionsPerSecond | Metric::CpuPerThousandConnectionsMs => Phase::Connections,
            Metric::IdlePlaintextKib => Phase::IdlePlaintext,
            Metric::IdleMtlsKib => Phase::IdleMtls,
        }
    }
}

/// What one phase against one target gave.
pub struct Measurement {
    pub figures: Vec<(Metric, f64)>,
    /// CPU use during a timed phase, percent of one core: (proxy, harness). The harness (load
    /// generator and app) has core 0 to itself; near 100% there, it was the bottleneck.
    pub cpu_percent: Option<(f64, f64)>,
}

/// Time for a proxy to finish with connections the harness just opened or closed.
const SETTLE: Duration = Duration::from_millis(500);

impl Phase {
    /// Whether the phase means anything without a proxy (mTLS needs one to terminate it).
    pub fn applies_to(self, kind: TargetKind) -> bool {
        kind != TargetKind::Direct
            || matches!(
                self,
                Phase::Plaintext | Phase::Tls | Phase::RrPlaintext | Phase::Connections
            )
    }
}

pub async fn measure(
    phase: Phase,
    target: Target,
    connector: &Arc<Connector>,
    options: &Options,
) -> anyhow::Result<Measurement> {
    let time = options.phase_time();
    let addr = target.addr;
    if let Phase::IdlePlaintext | Phase::IdleMtls = phase {
        return idle_memory(phase, target, connector, options).await;
    }
    let harness = Watched {
        pid: std::process::id(),
    };
    let cpu_start = target
        .process
        .map(|p| Ok::<_, anyhow::Error>((p.cpu_mark()?, harness.cpu_mark()?)));
    let cpu_start = cpu_start.transpose()?;
    let figures = match phase {
        Phase::Plaintext => vec![(
            Metric::PlaintextGbps,
            load::stream(connector, addr, Security::Plain, time).await?,
        )],
        Phase::Tls => vec![(
            Metric::TlsGbps,
            load::stream(connector, addr, Security::AppTls, time).await?,
        )],
        Phase::Mtls => vec![(
            Metric::MtlsGbps,
            load::stream(connector, addr, Security::Mesh, time).await?,
        )],
        Phase::RrPlaintext => {
            let (p50, p99) = load::request_response(connector, addr, Security::Plain, time).await?;
            vec![(Metric::RrPlaintextP50, p50), (Metric::RrPlaintextP99, p99)]
        }
        Phase::RrMtls => {
            let (p50, p99) = load::request_response(connector, addr, Security::Mesh, time).await?;
            vec![(Metric::RrMtlsP50, p50), (Metric::RrMtlsP99, p99)]
        }
        Phase::Handshakes => vec![(
            Metric::HandshakesPerSecond,
            load::connections(connector, addr, Security::Mesh, options.concurrency, time).await?,
        )],
        Phase::Connections => vec![(
            Metric::ConnectionsPerSecond,
            load::connections(connector, addr, Security::Plain, options.concurrency, time).await?,
        )],
        Phase::IdlePlaintext | Phase::IdleMtls => unreachable!("handled above"),
    };
    let cpu_percent = match (target.process, cpu_start) {
        (Some(process), Some((proxy_start, harness_start))) => {
            Some((process.cpu_percent(&proxy_start)?, harness.cpu_percent(&harness_start)?))
        }
        _ => None,
    };
    let mut figures = figures;
    match (figures.first(), cpu_percent) {
        (Some(&(Metric::HandshakesPerSecond, rate)), Some((cpu, _))) => {
            figures.push((Metric::HandshakesPerCpuSecond, rate / (cpu / 100.0).max(0.01)));
        }
        (Some(&(Metric::ConnectionsPerSecond, rate)), Some((cpu, _))) => {
            // core-ms per 1,000 connections = (cpu% / 100) * 1000 ms / rate * 1000
            figures.push((Metric::CpuPerThousandConnectionsMs, cpu * 10_000.0 / rate.max(0.01)));
        }
        _ => {}
    }
    Ok(Measurement { figures, cpu_percent })
}

/// The proxy's RSS growth per idle connection, in KiB. A few connections are opened and closed
/// first, so one-time set-up (thread-locals, first TLS handshake) is not counted per connection.
async fn idle_memory(
    phase: Phase,
    target: Target,
    connector: &Arc<Connector>,
    options: &Options,
) -> anyhow::Result<Measurement> {
    let process = target.process.context("idle memory needs a proxy process")?;
    let (metric, security) = match phase {
        Phase::IdleMtls => (Metric::IdleMtlsKib, Security::Mesh),
        _ => (Metric::IdlePlaintextKib, Security::Plain),
    };
    let clients = options.concurrency;
    drop(load::hold_idle(connector, target.addr, security, clients, clients).await?);
    tokio::time::sleep(SETTLE).await;
    let before = process.rss_kib()?;
    let held = load::hold_idle(connector, target.addr, security, options.idle_connections, clients).await?;
    tokio::time::sleep(SETTLE).await;
    let after = process.rss_kib()?;
    drop(held);
    let per_connection = after.saturating_sub(before) as f64 / options.idle_connections as f64;
    Ok(Measurement {
        figures: vec![(metric, per_connection)],
        cpu_percent: None,
    })
}
