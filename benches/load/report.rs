//! Figures of all runs, their medians, and the markdown table: absolute figures, the ratios
//! peerguard/direct and peerguard/HAProxy, and whether each product target is met.

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

/// The product targets of the task (the README's Performance table).
#[derive(Clone, Copy)]
enum Goal {
    /// peerguard / direct at least this.
    OfDirect(f64),
    /// peerguard / HAProxy at least this.
    OfHaproxy(f64),
    /// peerguard at most this (absolute).
    AtMost(f64),
    /// peerguard's figure below HAProxy's.
    BelowHaproxy,
}

/// One table row: a measured metric, or added latency over the direct plaintext p99.
struct Row {
    label: &'static str,
    metric: Metric,
    /// `Some(base)`: the row shows `metric - base[Direct]` of the same run.
    added_over: Option<Metric>,
    decimals: usize,
    goal: Option<Goal>,
}

const fn row(label: &'static str, metric: Metric, decimals: usize, goal: Option<Goal>) -> Row {
    Row {
        label,
        metric,
        added_over: None,
        decimals,
        goal,
    }
}

const ROWS: [Row; 15] = [
    row(
        "plaintext passthrough, 1 conn streaming (Gbit/s)",
        Metric::PlaintextGbps,
        2,
        Some(Goal::OfDirect(0.85)),
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
    row(
        "plaintext request/response 128 B, p50 (µs, lower is better)",
        Metric::RrPlaintextP50,
        1,
        None,
    ),
    row(
        "plaintext request/response 128 B, p99 (µs, lower is better)",
        Metric::RrPlaintextP99,
        1,
        None,
    ),
    Row {
        added_over: Some(Metric::RrPlaintextP99),
        ..row(
            "plaintext request/response, added p99 over direct (µs)",
            Metric::RrPlaintextP99,
            1,
            Some(Goal::BelowHaproxy),
        )
    },
    row(
        "mTLS request/response 128 B, p50 (µs, lower is better)",
        Metric::RrMtlsP50,
        1,
        None,
    ),
    row(
        "mTLS request/response 128 B, p99 (µs, lower is better)",
        Metric::RrMtlsP99,
        1,
        None,
    ),
    Row {
        added_over: Some(Metric::RrPlaintextP99),
        ..row(
            "mTLS request/response, added p99 over direct plaintext (µs)",
            Metric::RrMtlsP99,
            1,
            Some(Goal::BelowHaproxy),
        )
    },
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
    row(
        "new plaintext connections per second (concurrent clients: see header)",
        Metric::ConnectionsPerSecond,
        0,
        None,
    ),
    row(
        "proxy CPU per 1,000 new plaintext connections (core-ms, lower is better)",
        Metric::CpuPerThousandConnectionsMs,
        1,
        None,
    ),
    row(
        "memory per idle plaintext connection (KiB, lower is better)",
        Metric::IdlePlaintextKib,
        1,
        Some(Goal::AtMost(2.0)),
    ),
    row(
        "memory per idle mTLS connection (KiB, lower is better)",
        Metric::IdleMtlsKib,
        1,
        Some(Goal::AtMost(16.0)),
    ),
];

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
        let values: Vec<f64> = match row.added_over {
            None => values.values().copied().collect(),
            Some(_) if kind == TargetKind::Direct => return None,
            Some(base) => {
                let direct = self.figures.get(&(base, TargetKind::Direct))?;
                values
                    .iter()
                    .filter_map(|(run, v)| direct.get(run).map(|d| v - d))
                    .collect()
            }
        };
        median(values)
    }

    /// The markdown table.
    pub fn table(&self) -> String {
        let mut out = String::from(concat!(
            "| load | direct | peerguard | HAProxy | peerguard/direct | peerguard/HAProxy ",
            "| target | met? | CPU peerguard / harness | CPU HAProxy / harness |\n",
            "|---|---|---|---|---|---|---|---|---|---|\n",
        ));
        for row in &ROWS {
            let [direct, ours, haproxy] =
                [TargetKind::Direct, TargetKind::Peerguard, TargetKind::Haproxy].map(|k| self.median(row, k));
            if ours.is_none() {
                continue;
            }
            let show = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.*}", row.decimals));
            let ratio = |base: Option<f64>| match (ours, base) {
                (Some(o), Some(b)) if row.added_over.is_none() && b != 0.0 => format!("{:.2}×", o / b),
                _ => "—".to_string(),
            };
            let (target, met) = verdict(row.goal, ours, direct, haproxy);
            let cpu = |k| {
                let runs = self.cpu.get(&(row.metric.phase(), k)).cloned().unwrap_or_default();
                let proxy = median(runs.iter().map(|c| c.0).collect());
                let harness = median(runs.iter().map(|c| c.1).collect());
                proxy
                    .zip(harness)
                    .map_or("—".to_string(), |(p, h)| format!("{p:.0}% / {h:.0}%"))
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {target} | {met} | {} | {} |",
                row.label,
                show(direct),
                show(ours),
                show(haproxy),
                ratio(direct),
                ratio(haproxy),
                cpu(TargetKind::Peerguard),
                cpu(TargetKind::Haproxy),
            );
        }
        out
    }
}

/// The target's wording and whether the medians meet it ("?" when a figure is missing).
fn verdict(goal: Option<Goal>, ours: Option<f64>, direct: Option<f64>, haproxy: Option<f64>) -> (String, &'static str) {
    let Some(goal) = goal else {
        return (String::new(), "");
    };
    let (text, met) = match goal {
        Goal::OfDirect(r) => (format!("≥ {r}× direct"), ours.zip(direct).map(|(o, d)| o >= r * d)),
        Goal::OfHaproxy(r) => (format!("≥ {r}× HAProxy"), ours.zip(haproxy).map(|(o, h)| o >= r * h)),
        Goal::AtMost(max) => (format!("≤ {max} KiB"), ours.map(|o| o <= max)),
        Goal::BelowHaproxy => ("below HAProxy".to_string(), ours.zip(haproxy).map(|(o, h)| o < h)),
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
