//! Whole-proxy load harness: the same loads against the app direct, through peerguard (the
//! release binary, a separate process) and through HAProxy (when installed), in one run, and a
//! markdown table of medians and ratios. See benches/README.md.
//!
//! Layout:
//! - `options`: the command line; `Phase`, the kinds of load.
//! - `host`: CPU pinning, fd limits, machine facts, RSS and CPU time from /proc.
//! - `pki`: a throwaway mesh CA and app CA from `peerguard::certs::DevCa`; rustls configs.
//! - `app`: the sink/echo app (a thread of this process, on the harness core).
//! - `proxies`: peerguard and HAProxy as pinned child processes, killed on drop.
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

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::Parser;

use crate::load::Connector;
use crate::options::Options;
use crate::pki::Pki;
use crate::proxies::{Proxy, Target, TargetKind};
use crate::report::Results;

/// Descriptors the harness needs beyond the idle connections (app, clients, files).
const FD_SLACK: u64 = 1024;

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
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
    let with_haproxy = !options.no_haproxy && proxies::haproxy_available();
    if !with_haproxy {
        eprintln!("HAProxy left out (--no-haproxy, or `haproxy` is not on PATH)");
    }
    let direct = Target {
        kind: TargetKind::Direct,
        addr: app_addr,
        process: None,
    };

    let mut results = Results::default();
    for run in 0..options.runs {
        for phase in options.phases() {
            // Fresh proxies for every phase: no phase inherits another's heap or sockets.
            let mut proxies: Vec<Proxy> = vec![proxies::start_peerguard(
                &options.peerguard,
                options.policy.as_deref(),
                &scratch.0,
                &pki,
                app_addr,
            )?];
            if with_haproxy {
                let max_connections = 2 * options.idle_connections + 256;
                proxies.push(proxies::start_haproxy(&scratch.0, &pki, app_addr, max_connections)?);
            }
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
    let haproxy = Command::new("haproxy")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .unwrap_or_else(|| "not run".into());
    format!(
        "## peerguard load harness\n\n\
         - command: `{}`\n\
         - machine: {}; load average before {load_before}, after {}\n\
         - peerguard: {} (pinned to core {}; app and load generator on core 0)\n\
         - HAProxy: {}\n\
         - {} run(s), {} s per timed phase, {} idle connections, {} handshake clients; medians of runs\n",
        command.join(" "),
        host::machine_facts(),
        host::load_average(),
        options.peerguard.display(),
        host::PROXY_CORE,
        haproxy,
        options.runs,
        options.seconds,
        options.idle_connections,
        options.concurrency,
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
