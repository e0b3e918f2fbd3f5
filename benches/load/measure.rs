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
    /// Proxy CPU per GB (10^9 bytes) streamed plaintext, in core-seconds.
    PlaintextCpuPerGb,
    TlsGbps,
    MtlsGbps,
    RrPlaintextP50,
    RrPlaintextP99,
    RrMtlsP50,
    RrMtlsP99,
    RrConcurrentPlaintextPerSecond,
    RrConcurrentPlaintextP99,
    /// Proxy CPU per 1,000 round trips of the concurrent plaintext request/response load.
    RrConcurrentPlaintextCpuMs,
    RrConcurrentMtlsPerSecond,
    RrConcurrentMtlsP99,
    RrConcurrentMtlsCpuMs,
    HandshakesPerSecond,
    /// Handshakes per second of the proxy's own CPU time: its capacity, even when the load
    /// generator (one core) cannot saturate it.
    HandshakesPerCpuSecond,
    /// Proxy CPU per 1,000 full handshakes, in core-milliseconds.
    CpuPerThousandHandshakesMs,
    ConnectionsPerSecond,
    /// Proxy CPU per 1,000 new plaintext connections, in core-milliseconds.
    CpuPerThousandConnectionsMs,
    /// VmRSS once listening, before any connection, in MB (10^6 bytes).
    StartRssMb,
    IdlePlaintextKib,
    IdleMtlsKib,
}

impl Metric {
    /// The phase that measures it.
    pub fn phase(self) -> Phase {
        match self {
            Metric::PlaintextGbps | Metric::PlaintextCpuPerGb => Phase::Plaintext,
            Metric::TlsGbps => Phase::Tls,
            Metric::MtlsGbps => Phase::Mtls,
            Metric::RrPlaintextP50 | Metric::RrPlaintextP99 => Phase::RrPlaintext,
            Metric::RrMtlsP50 | Metric::RrMtlsP99 => Phase::RrMtls,
            Metric::RrConcurrentPlaintextPerSecond
            | Metric::RrConcurrentPlaintextP99
            | Metric::RrConcurrentPlaintextCpuMs => Phase::RrConcurrentPlaintext,
            Metric::RrConcurrentMtlsPerSecond | Metric::RrConcurrentMtlsP99 | Metric::RrConcurrentMtlsCpuMs => {
                Phase::RrConcurrentMtls
            }
            Metric::HandshakesPerSecond | Metric::HandshakesPerCpuSecond | Metric::CpuPerThousandHandshakesMs => {
                Phase::Handshakes
            }
            Metric::ConnectionsPerSecond | Metric::CpuPerThousandConnectionsMs => Phase::Connections,
            Metric::StartRssMb => Phase::StartRss,
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

/// What a phase's proxy CPU is divided by: operations (connections, handshakes, round trips),
/// shown per 1,000 in core-ms, or bytes, shown per GB in core-seconds.
enum Work {
    Count(u64),
    Bytes(u64),
}

/// A figure of the phase's proxy CPU: the metric, and the work that CPU is divided by.
type CpuPer = (Metric, Work);

/// Time for a proxy to finish with connections the harness just opened or closed.
const SETTLE: Duration = Duration::from_millis(500);

impl Phase {
    /// Whether the phase means anything for a target: the app direct only where no proxy is
    /// needed (mTLS needs one to terminate it), the access-log variants of peerguard only where
    /// the log's cost per connection is measured, the rustls server only for handshakes.
    pub fn applies_to(self, kind: TargetKind) -> bool {
        match kind {
            TargetKind::Direct => matches!(
                self,
                Phase::Plaintext | Phase::Tls | Phase::RrPlaintext | Phase::RrConcurrentPlaintext | Phase::Connections
            ),
            TargetKind::PeerguardTextLog | TargetKind::PeerguardJsonLog => {
                matches!(self, Phase::Connections | Phase::Handshakes)
            }
            TargetKind::Rustls => self == Phase::Handshakes,
            TargetKind::Peerguard | TargetKind::Haproxy | TargetKind::Nginx => true,
        }
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
    match phase {
        Phase::IdlePlaintext | Phase::IdleMtls => return idle_memory(phase, target, connector, options).await,
        Phase::StartRss => return start_rss(target).await,
        _ => {}
    }
    let harness = Watched::this_process();
    let cpu_start = target
        .process
        .map(|p| Ok::<_, anyhow::Error>((p.cpu_mark()?, harness.cpu_mark()?)));
    let cpu_start = cpu_start.transpose()?;
    // The figures, and the work the proxy's CPU over the phase is divided by.
    let (mut figures, work): (Vec<(Metric, f64)>, Option<CpuPer>) = match phase {
        Phase::Plaintext => {
            let streamed = load::stream(connector, addr, Security::Plain, time).await?;
            (
                vec![(Metric::PlaintextGbps, streamed.gbit_per_second)],
                Some((Metric::PlaintextCpuPerGb, Work::Bytes(streamed.bytes))),
            )
        }
        Phase::Tls => {
            let streamed = load::stream(connector, addr, Security::AppTls, time).await?;
            (vec![(Metric::TlsGbps, streamed.gbit_per_second)], None)
        }
        Phase::Mtls => {
            let streamed = load::stream(connector, addr, Security::Mesh, time).await?;
            (vec![(Metric::MtlsGbps, streamed.gbit_per_second)], None)
        }
        Phase::RrPlaintext => {
            let rt = load::request_response(connector, addr, Security::Plain, 1, time).await?;
            (
                vec![(Metric::RrPlaintextP50, rt.p50_us), (Metric::RrPlaintextP99, rt.p99_us)],
                None,
            )
        }
        Phase::RrMtls => {
            let rt = load::request_response(connector, addr, Security::Mesh, 1, time).await?;
            (
                vec![(Metric::RrMtlsP50, rt.p50_us), (Metric::RrMtlsP99, rt.p99_us)],
                None,
            )
        }
        Phase::RrConcurrentPlaintext => {
            let rt = load::request_response(connector, addr, Security::Plain, options.rr_connections, time).await?;
            (
                vec![
                    (Metric::RrConcurrentPlaintextPerSecond, rt.per_second),
                    (Metric::RrConcurrentPlaintextP99, rt.p99_us),
                ],
                Some((Metric::RrConcurrentPlaintextCpuMs, Work::Count(rt.total))),
            )
        }
        Phase::RrConcurrentMtls => {
            let rt = load::request_response(connector, addr, Security::Mesh, options.rr_connections, time).await?;
            (
                vec![
                    (Metric::RrConcurrentMtlsPerSecond, rt.per_second),
                    (Metric::RrConcurrentMtlsP99, rt.p99_us),
                ],
                Some((Metric::RrConcurrentMtlsCpuMs, Work::Count(rt.total))),
            )
        }
        Phase::Handshakes => {
            let done = load::connections(connector, addr, Security::Mesh, options.concurrency, time).await?;
            (
                vec![(Metric::HandshakesPerSecond, done.per_second)],
                Some((Metric::CpuPerThousandHandshakesMs, Work::Count(done.count))),
            )
        }
        Phase::Connections => {
            let done = load::connections(connector, addr, Security::Plain, options.concurrency, time).await?;
            (
                vec![(Metric::ConnectionsPerSecond, done.per_second)],
                Some((Metric::CpuPerThousandConnectionsMs, Work::Count(done.count))),
            )
        }
        Phase::StartRss | Phase::IdlePlaintext | Phase::IdleMtls => unreachable!("handled above"),
    };
    let (Some(process), Some((proxy_start, harness_start))) = (target.process, cpu_start) else {
        return Ok(Measurement {
            figures,
            cpu_percent: None,
        });
    };
    let (proxy_cpu, wall) = process.cpu_since(&proxy_start)?;
    let (harness_cpu, _) = harness.cpu_since(&harness_start)?;
    match work {
        Some((metric, Work::Count(count))) => {
            // core-ms per 1,000 = CPU seconds * 1,000 ms / count * 1,000
            figures.push((metric, proxy_cpu * 1e6 / count.max(1) as f64));
            if phase == Phase::Handshakes {
                // The clock-tick resolution (10 ms) bounds the divisor away from zero.
                figures.push((Metric::HandshakesPerCpuSecond, count as f64 / proxy_cpu.max(0.01)));
            }
        }
        Some((metric, Work::Bytes(bytes))) => figures.push((metric, proxy_cpu / (bytes.max(1) as f64 / 1e9))),
        None => {}
    }
    let percent = |cpu: f64| cpu / wall.as_secs_f64() * 100.0;
    Ok(Measurement {
        figures,
        cpu_percent: Some((percent(proxy_cpu), percent(harness_cpu))),
    })
}

/// The proxy's resident memory before any connection: it listens (`proxies::start` waited
/// for that without connecting), and start-up work after the listen has had time to finish.
async fn start_rss(target: Target) -> anyhow::Result<Measurement> {
    let process = target.process.context("start-up memory needs a proxy process")?;
    tokio::time::sleep(SETTLE).await;
    let mb = process.rss_kib()? as f64 * 1024.0 / 1e6;
    Ok(Measurement {
        figures: vec![(Metric::StartRssMb, mb)],
        cpu_percent: None,
    })
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
