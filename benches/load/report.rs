//! Figures of all runs, their medians, and the markdown table: absolute figures for the app
//! direct, peerguard, the peers (HAProxy, nginx) and the rustls ceiling; the ratios
//! peerguard/direct and peerguard/best peer; and whether each target of issue 10 is met.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::measure::Metric;
use crate::options::Phase;
use crate::proxies::TargetKind;

/// Every figure, per run, so derived figures pair values of the same run.
#[derive(Default)]
pub struct Results {
    figures: BTreeMap<(Metric, TargetKind), BTreeMap<usize, f64>>,
    /// (proxy, harness) CPU percent per run.
    cpu: BTreeMap<(Phase, TargetKind), Vec<(f64, f64)>>,
}

/// A target (benches/README.md lists them and where they come from).
#[derive(Clone, Copy)]
enum Goal {
    /// peerguard / direct at least this.
    OfDirect(f64),
    /// peerguard / HAProxy at least this.
    OfHaproxy(f64),
    /// Against the best peer (the higher figure, or the lower where lower is better): at least
    /// this times it, or where lower is better at most this times it.
    OfBestPeer(f64),
    /// peerguard at most this (absolute), in the unit named.
    AtMost(f64, &'static str),
    /// peerguard at most this times the rustls server's figure (a cost).
    OfRustls(f64),
}

/// How a row's figure for a target comes out of the recorded ones, run by run.
#[derive(Clone, Copy)]
enum Derive {
    /// The metric as measured.
    Measured,
    /// The metric minus `base` of the app direct in the same run (added latency).
    AddedOver(Metric),
    /// The access log's share of the metric, percent: (log on − log off) / log on, where
    /// log off is peerguard's own run of the same phase and run number.
    LogShare,
}

/// One table row.
struct Row {
    label: &'static str,
    metric: Metric,
    /// Which peerguard run fills the peerguard column: access log off, or one of the log runs
    /// (then the other columns stay empty: the peers ran without logs).
    ours: TargetKind,
    derive: Derive,
    decimals: usize,
    lower_is_better: bool,
    goal: Option<Goal>,
}

const fn row(label: &'static str, metric: Metric, decimals: usize, goal: Option<Goal>) -> Row {
    Row {
        label,
        metric,
        ours: TargetKind::Peerguard,
        derive: Derive::Measured,
        decimals,
        lower_is_better: false,
        goal,
    }
}

/// A row where a lower figure is better (latency, memory, CPU).
const fn cost(label: &'static str, metric: Metric, decimals: usize, goal: Option<Goal>) -> Row {
    Row {
        lower_is_better: true,
        ..row(label, metric, decimals, goal)
    }
}

/// The CPU of a peerguard run with the access log on, and the log's share of it.
const fn log_rows(what: &'static [&'static str; 2], metric: Metric, ours: TargetKind) -> [Row; 2] {
    [
        Row {
            ours,
            ..cost(what[0], metric, 1, None)
        },
        Row {
            ours,
            derive: Derive::LogShare,
            ..cost(what[1], metric, 1, Some(Goal::AtMost(10.0, "%")))
        },
    ]
}

const LOG_ROWS: [[Row; 2]; 4] = [
    log_rows(
        &[
            "proxy CPU per 1,000 new plaintext connections, access log text (core-ms)",
            "access log's share of proxy CPU per new plaintext connection, text (%)",
        ],
        Metric::CpuPerThousandConnectionsMs,
        TargetKind::PeerguardTextLog,
    ),
    log_rows(
        &[
            "proxy CPU per 1,000 new plaintext connections, access log JSON (core-ms)",
            "access log's share of proxy CPU per new plaintext connection, JSON (%)",
        ],
        Metric::CpuPerThousandConnectionsMs,
        TargetKind::PeerguardJsonLog,
    ),
    log_rows(
        &[
            "proxy CPU per 1,000 full mTLS handshakes, access log text (core-ms)",
            "access log's share of proxy CPU per mTLS handshake, text (%)",
        ],
        Metric::CpuPerThousandHandshakesMs,
        TargetKind::PeerguardTextLog,
    ),
    log_rows(
        &[
            "proxy CPU per 1,000 full mTLS handshakes, access log JSON (core-ms)",
            "access log's share of proxy CPU per mTLS handshake, JSON (%)",
        ],
        Metric::CpuPerThousandHandshakesMs,
        TargetKind::PeerguardJsonLog,
    ),
];

const ROWS: [Row; 24] = [
    cost(
        "proxy RSS at start, listening, before any connection (MB)",
        Metric::StartRssMb,
        1,
        Some(Goal::AtMost(10.0, "MB")),
    ),
    row(
        "plaintext passthrough, 1 conn streaming (Gbit/s)",
        Metric::PlaintextGbps,
        2,
        Some(Goal::OfDirect(0.85)),
    ),
    cost(
        "plaintext streaming, proxy CPU per GB (core-s)",
        Metric::PlaintextCpuPerGb,
        3,
        Some(Goal::AtMost(0.35, "core-s")),
    ),
    row(
        "TLS passthrough (app's own TLS, ALPN h2), 1 conn streaming (Gbit/s)",
        Metric::TlsGbps,
        2,
        None,
    ),
    row(
        "mTLS termination, 1 conn streaming (Gbit/s)",
        Metric::MtlsGbps,
        2,
        Some(Goal::OfHaproxy(1.6)),
    ),
    cost(
        "plaintext request/response 128 B, 1 conn, p50 (µs)",
        Metric::RrPlaintextP50,
        1,
        None,
    ),
    cost(
        "plaintext request/response 128 B, 1 conn, p99 (µs)",
        Metric::RrPlaintextP99,
        1,
        None,
    ),
    Row {
        derive: Derive::AddedOver(Metric::RrPlaintextP99),
        ..cost(
            "plaintext request/response, 1 conn, added p99 over direct (µs)",
            Metric::RrPlaintextP99,
            1,
            Some(Goal::OfBestPeer(0.75)),
        )
    },
    cost(
        "mTLS request/response 128 B, 1 conn, p50 (µs)",
        Metric::RrMtlsP50,
        1,
        None,
    ),
    cost(
        "mTLS request/response 128 B, 1 conn, p99 (µs)",
        Metric::RrMtlsP99,
        1,
        None,
    ),
    Row {
        derive: Derive::AddedOver(Metric::RrPlaintextP99),
        ..cost(
            "mTLS request/response, 1 conn, added p99 over direct plaintext (µs)",
            Metric::RrMtlsP99,
            1,
            Some(Goal::OfBestPeer(1.0)),
        )
    },
    row(
        "plaintext request/response 128 B, concurrent conns (see header), requests/s",
        Metric::RrConcurrentPlaintextPerSecond,
        0,
        None,
    ),
    cost(
        "plaintext request/response 128 B, concurrent conns, p99 (µs)",
        Metric::RrConcurrentPlaintextP99,
        1,
        Some(Goal::OfBestPeer(1.0)),
    ),
    cost(
        "proxy CPU per 1,000 plaintext requests, concurrent conns (core-ms)",
        Metric::RrConcurrentPlaintextCpuMs,
        2,
        Some(Goal::OfBestPeer(0.8)),
    ),
    row(
        "mTLS request/response 128 B, concurrent conns, requests/s",
        Metric::RrConcurrentMtlsPerSecond,
        0,
        None,
    ),
    cost(
        "mTLS request/response 128 B, concurrent conns, p99 (µs)",
        Metric::RrConcurrentMtlsP99,
        1,
        None,
    ),
    cost(
        "proxy CPU per 1,000 mTLS requests, concurrent conns (core-ms)",
        Metric::RrConcurrentMtlsCpuMs,
        2,
        None,
    ),
    row(
        "full mTLS handshakes per second (concurrent clients: see header)",
        Metric::HandshakesPerSecond,
        0,
        Some(Goal::OfHaproxy(5.0)),
    ),
    row(
        "full mTLS handshakes per second of proxy CPU time",
        Metric::HandshakesPerCpuSecond,
        0,
        Some(Goal::OfHaproxy(5.0)),
    ),
    cost(
        "proxy CPU per 1,000 full mTLS handshakes (core-ms)",
        Metric::CpuPerThousandHandshakesMs,
        1,
        Some(Goal::OfRustls(1.25)),
    ),
    row(
        "new plaintext connections per second (concurrent clients: see header)",
        Metric::ConnectionsPerSecond,
        0,
        Some(Goal::OfBestPeer(1.0)),
    ),
    cost(
        "proxy CPU per 1,000 new plaintext connections (core-ms)",
        Metric::CpuPerThousandConnectionsMs,
        1,
        Some(Goal::OfBestPeer(0.8)),
    ),
    cost(
        "memory per idle plaintext connection (KiB)",
        Metric::IdlePlaintextKib,
        1,
        Some(Goal::AtMost(2.0, "KiB")),
    ),
    cost(
        "memory per idle mTLS connection (KiB)",
        Metric::IdleMtlsKib,
        1,
        Some(Goal::AtMost(10.0, "KiB")),
    ),
];

/// The medians of one row.
struct Medians {
    direct: Option<f64>,
    ours: Option<f64>,
    peers: Vec<(TargetKind, Option<f64>)>,
    rustls: Option<f64>,
}

impl Medians {
    /// The best peer with a figure: the higher, or the lower where lower is better.
    fn best_peer(&self, lower_is_better: bool) -> Option<(TargetKind, f64)> {
        let measured = self.peers.iter().filter_map(|(k, v)| v.map(|v| (*k, v)));
        if lower_is_better {
            measured.min_by(|a, b| a.1.total_cmp(&b.1))
        } else {
            measured.max_by(|a, b| a.1.total_cmp(&b.1))
        }
    }
}

impl Results {
    pub fn record(&mut self, run: usize, kind: TargetKind, metric: Metric, value: f64) {
        self.figures.entry((metric, kind)).or_default().insert(run, value);
    }

    pub fn record_cpu(&mut self, phase: Phase, kind: TargetKind, percent: (f64, f64)) {
        self.cpu.entry((phase, kind)).or_default().push(percent);
    }

    /// The median over runs of a row's figure for `kind`.
    fn median(&self, row: &Row, kind: TargetKind) -> Option<f64> {
        let values = self.figures.get(&(row.metric, kind))?;
        let in_same_run = |base: &BTreeMap<usize, f64>, pair: fn(f64, f64) -> f64| -> Vec<f64> {
            values
                .iter()
                .filter_map(|(run, v)| base.get(run).map(|b| pair(*v, *b)))
                .collect()
        };
        let values: Vec<f64> = match row.derive {
            Derive::Measured => values.values().copied().collect(),
            Derive::AddedOver(_) if kind == TargetKind::Direct => return None,
            Derive::AddedOver(base) => in_same_run(self.figures.get(&(base, TargetKind::Direct))?, |v, d| v - d),
            Derive::LogShare => in_same_run(self.figures.get(&(row.metric, TargetKind::Peerguard))?, |on, off| {
                (on - off) / on * 100.0
            }),
        };
        median(values)
    }

    fn medians(&self, row: &Row) -> Medians {
        // A log run's figure stands alone: the others ran with their logs off.
        let others = row.ours == TargetKind::Peerguard;
        let of = |kind| if others { self.median(row, kind) } else { None };
        Medians {
            direct: of(TargetKind::Direct),
            ours: self.median(row, row.ours),
            peers: TargetKind::PEERS.iter().map(|&k| (k, of(k))).collect(),
            rustls: of(TargetKind::Rustls),
        }
    }

    /// The markdown table.
    pub fn table(&self) -> String {
        let mut out = String::from(concat!(
            "| load | direct | peerguard | HAProxy | nginx | rustls alone | peerguard/direct ",
            "| peerguard/best peer | target | met? | CPU peerguard / harness | CPU HAProxy / harness ",
            "| CPU nginx / harness |\n",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        ));
        let rows = ROWS.iter().chain(LOG_ROWS.iter().flatten());
        for row in rows {
            let m = self.medians(row);
            let Some(ours) = m.ours else {
                continue;
            };
            let show = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.*}", row.decimals));
            let best = m.best_peer(row.lower_is_better);
            // An added latency can be zero or negative: no ratio then.
            let vs_direct = match m.direct {
                Some(direct) if direct > 0.0 => format!("{:.2}×", ours / direct),
                _ => "—".to_string(),
            };
            let vs_best = match best {
                Some((kind, value)) if value > 0.0 => format!("{:.2}× {}", ours / value, kind.name()),
                _ => "—".to_string(),
            };
            let (target, met) = verdict(row, &m, best);
            let cpu = |k| {
                let runs = self.cpu.get(&(row.metric.phase(), k)).cloned().unwrap_or_default();
                let proxy = median(runs.iter().map(|c| c.0).collect());
                let harness = median(runs.iter().map(|c| c.1).collect());
                proxy
                    .zip(harness)
                    .map_or("—".to_string(), |(p, h)| format!("{p:.0}% / {h:.0}%"))
            };
            let peer = |k: TargetKind| m.peers.iter().find(|(kind, _)| *kind == k).and_then(|(_, v)| *v);
            let peer_cpu = |k| {
                if row.ours == TargetKind::Peerguard {
                    cpu(k)
                } else {
                    "—".to_string()
                }
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {vs_direct} | {vs_best} | {target} | {met} | {} | {} | {} |",
                row.label,
                show(m.direct),
                show(Some(ours)),
                show(peer(TargetKind::Haproxy)),
                show(peer(TargetKind::Nginx)),
                show(m.rustls),
                cpu(row.ours),
                peer_cpu(TargetKind::Haproxy),
                peer_cpu(TargetKind::Nginx),
            );
        }
        out
    }
}

/// The target's wording and whether the medians meet it ("?" when a figure is missing).
fn verdict(row: &Row, m: &Medians, best: Option<(TargetKind, f64)>) -> (String, &'static str) {
    let Some(goal) = row.goal else {
        return (String::new(), "");
    };
    let ours = m.ours;
    let haproxy = m
        .peers
        .iter()
        .find(|(k, _)| *k == TargetKind::Haproxy)
        .and_then(|(_, v)| *v);
    let (text, met) = match goal {
        Goal::OfDirect(r) => (format!("≥ {r}× direct"), ours.zip(m.direct).map(|(o, d)| o >= r * d)),
        Goal::OfHaproxy(r) => (format!("≥ {r}× HAProxy"), ours.zip(haproxy).map(|(o, h)| o >= r * h)),
        Goal::OfBestPeer(r) if row.lower_is_better => (
            format!("≤ {r}× best peer"),
            ours.zip(best).map(|(o, (_, b))| o <= r * b),
        ),
        Goal::OfBestPeer(r) => (
            format!("≥ {r}× best peer"),
            ours.zip(best).map(|(o, (_, b))| o >= r * b),
        ),
        Goal::AtMost(max, unit) => (format!("≤ {max} {unit}"), ours.map(|o| o <= max)),
        Goal::OfRustls(r) => (format!("≤ {r}× rustls"), ours.zip(m.rustls).map(|(o, b)| o <= r * b)),
    };
    let met = match met {
        Some(true) => "yes",
        Some(false) => "**NO**",
        None => "?",
    };
    (text, met)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}
