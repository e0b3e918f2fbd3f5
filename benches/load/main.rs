//! Whole-proxy load harness: the same loads against the app direct, through peerguard (the
//! release binary, a separate process; access log off, and on as text and JSON) and through
//! HAProxy and nginx (when installed), with a plain rustls server as the handshake ceiling, in
//! one run, and a markdown table of medians and ratios. See benches/README.md.
//!
//! Layout:
//! - `options`: the command line; `Phase`, the kinds of load.
//! - `host`: CPU pinning, fd limits, machine facts, RSS and CPU time from /proc.
//! - `pki`: a throwaway mesh CA and app CA from `peerguard::certs::DevCa`; rustls configs.
//! - `app`: the sink/echo app (a thread of this process, on the harness core).
//! - `proxies`: peerguard, HAProxy, nginx and the rustls server as pinned child processes,
//!   killed on drop.
//! - `rustls_server`: the handshake ceiling (this binary re-executed with a hidden flag).
//! - `load`: the clients and the loads; `measure`: one phase against one target.
//! - `report`: medians, ratios, targets, the table.

mod app;
mod host;
mod load;
mod measure;
mod options;
mod pki;
mod proxies;
mod report;
mod rustls_server;

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::Parser;

use crate::load::Connector;
use crate::options::Options;
use crate::pki::Pki;
use crate::proxies::{AccessLog, Proxy, Target, TargetKind};
use crate::report::Results;

/// Descriptors the harness needs beyond the idle connections (app, clients, files).
const FD_SLACK: u64 = 1024;

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    if let (Some(listen), Some(cert_dir)) = (options.rustls_server, &options.rustls_cert_dir) {
        return rustls_server::run(listen, cert_dir);
    }
    if !options.bench {
        println!("the load harness runs under `cargo bench --bench load` (after `cargo build --release`)");
        return Ok(());
    }
    // Before the runtime starts a thread: every thread of this process inherits the pinning.
    host::pin_self().context("pinning the harness to core 0 with taskset")?;
    // An mTLS connection through HAProxy holds four descriptors there; here, two per connection.
    let fds = host::ensure_nofile(4 * options.idle_connections as u64 + FD_SLACK)?;
    anyhow::ensure!(
        fds >= 2 * options.idle_connections as u64 + FD_SLACK,
        "open-file limit {fds} is too low for --idle-connections {}",
        options.idle_connections
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let load_before = host::load_average();
    let results = runtime.block_on(run(&options))?;
    println!("{}", header(&options, &load_before));
    println!("{}", results.table());
    Ok(())
}

async fn run(options: &Options) -> anyhow::Result<Results> {
    let scratch = Scratch::create()?;
    let pki = Pki::create(&scratch.0)?;
    let app_addr = app::start(pki.app_server.clone())?;
    let connector = Connector::new(&pki);
    let with_haproxy = !options.no_haproxy && proxies::available("haproxy");
    if !with_haproxy {
        eprintln!("HAProxy left out (--no-haproxy, or `haproxy` is not on PATH)");
    }
    let with_nginx = !options.no_nginx && proxies::available("nginx");
    if !with_nginx {
        eprintln!("nginx left out (--no-nginx, or `nginx` is not on PATH)");
    }
    let direct = Target {
        kind: TargetKind::Direct,
        addr: app_addr,
        process: None,
    };
    // Peers must hold both idle phases' connections (an mTLS connection counts twice).
    let max_connections = 2 * options.idle_connections + 256;
    let peerguard = |log| {
        proxies::start_peerguard(
            &options.peerguard,
            options.policy.as_deref(),
            &scratch.0,
            &pki,
            app_addr,
            log,
        )
    };
    let start = |kind: TargetKind| -> anyhow::Result<Proxy> {
        match kind {
            TargetKind::Peerguard => peerguard(AccessLog::Off),
            TargetKind::PeerguardTextLog => peerguard(AccessLog::Text),
            TargetKind::PeerguardJsonLog => peerguard(AccessLog::Json),
            TargetKind::Haproxy => proxies::start_haproxy(&scratch.0, &pki, app_addr, max_connections),
            TargetKind::Nginx => proxies::start_nginx(&scratch.0, &pki, app_addr, max_connections),
            TargetKind::Rustls => proxies::start_rustls_server(&scratch.0, &pki),
            TargetKind::Direct => unreachable!("the app is no process of its own"),
        }
    };
    let proxy_kinds: Vec<TargetKind> = [
        TargetKind::Peerguard,
        TargetKind::PeerguardTextLog,
        TargetKind::PeerguardJsonLog,
        TargetKind::Haproxy,
        TargetKind::Nginx,
        TargetKind::Rustls,
    ]
    .into_iter()
    .filter(|kind| match kind {
        TargetKind::Haproxy => with_haproxy,
        TargetKind::Nginx => with_nginx,
        _ => true,
    })
    .collect();

    let mut results = Results::default();
    for run in 0..options.runs {
        for phase in options.phases() {
            // Fresh proxies for every phase: no phase inherits another's heap or sockets.
            let proxies = proxy_kinds
                .iter()
                .filter(|kind| phase.applies_to(**kind))
                .map(|kind| start(*kind))
                .collect::<anyhow::Result<Vec<Proxy>>>()?;
            let targets = std::iter::once(direct).chain(proxies.iter().map(|p| p.target));
            for target in targets.filter(|t| phase.applies_to(t.kind)) {
                let label = format!("run {}/{} {phase:?} {}", run + 1, options.runs, target.kind.name());
                let measured = measure::measure(phase, target, &connector, options)
                    .await
                    .with_context(|| label.clone())?;
                eprintln!("{label}: {:?}", measured.figures);
                for (metric, value) in measured.figures {
                    results.record(run, target.kind, metric, value);
                }
                if let Some(cpu) = measured.cpu_percent {
                    results.record_cpu(phase, target.kind, cpu);
                }
            }
        }
    }
    Ok(results)
}

/// The command line, the machine and the versions under test.
fn header(options: &Options, load_before: &str) -> String {
    let command: Vec<String> = std::env::args().collect();
    // HAProxy prints its version to stdout, nginx to stderr.
    let version = |program: &str| {
        Command::new(program)
            .arg("-v")
            .output()
            .ok()
            .and_then(|o| {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text).lines().next().map(str::to_string)
            })
            .unwrap_or_else(|| "not run".into())
    };
    format!(
        "## peerguard load harness\n\n\
         - command: `{}`\n\
         - machine: {}; load average before {load_before}, after {}\n\
         - peerguard: {} (pinned to core {}; app and load generator on core 0)\n\
         - HAProxy: {}{}\n\
         - nginx: {}{}\n\
         - rustls ceiling: a minimal tokio-rustls server (this harness re-executed), pinned to core {}\n\
         - access log runs: peerguard's stderr written to a file in {} (text, and `--log-format json`)\n\
         - {} run(s), {} s per timed phase, {} idle connections, {} handshake/connection clients, \
         {} request/response connections; medians of runs\n",
        command.join(" "),
        host::machine_facts(),
        host::load_average(),
        options.peerguard.display(),
        host::PROXY_CORE,
        version("haproxy"),
        if options.no_haproxy {
            " (left out: --no-haproxy)"
        } else {
            ""
        },
        version("nginx"),
        if options.no_nginx {
            " (left out: --no-nginx)"
        } else {
            ""
        },
        host::PROXY_CORE,
        std::env::temp_dir().display(),
        options.runs,
        options.seconds,
        options.idle_connections,
        options.concurrency,
        options.rr_connections,
    )
}

/// A directory for certificates, policy and logs of this run, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("peerguard-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
