//! The machine and its processes: CPU pinning and file-descriptor limits (through `taskset`
//! and `prlimit`, so the harness needs no unsafe code), machine facts for the report, whether
//! a port listens, and a process's (with its workers') RSS and CPU time from /proc.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// The core the load generator and the app run on; proxies get `PROXY_CORE`.
const HARNESS_CORE: &str = "0";
pub const PROXY_CORE: &str = "1";

/// Pins this process to the harness core. Call before any thread starts: threads inherit it.
pub fn pin_self() -> anyhow::Result<()> {
    run_tool("taskset", &["-p", "-c", HARNESS_CORE, &std::process::id().to_string()])
}

/// Raises this process's soft open-file limit (children inherit it) to fit `needed`
/// descriptors, as far as the hard limit allows; returns the limit now in force.
pub fn ensure_nofile(needed: u64) -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let (soft, hard) = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| {
            let mut values = rest.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
            Some((values.next()?, values.next()?))
        })
        .ok_or_else(|| anyhow::anyhow!("no open-file limit in /proc/self/limits"))?;
    let wanted = needed.min(hard);
    if soft >= wanted {
        return Ok(soft);
    }
    let pid = std::process::id().to_string();
    run_tool("prlimit", &["--pid", &pid, &format!("--nofile={wanted}:")])?;
    Ok(wanted)
}

fn run_tool(tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(tool).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{tool} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// `nproc`, kernel and CPU model, for the report's header.
pub fn machine_facts() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .unwrap_or("unknown CPU");
    format!(
        "CPUs online {} (harness sees {cpus}), kernel {}, {}",
        online.trim(),
        kernel.trim(),
        model.trim()
    )
}

/// The 1, 5 and 15 minute load averages: how busy the shared machine was.
pub fn load_average() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Whether a TCP socket listens on `addr` (an IPv4 loopback address), from /proc/net/tcp, so
/// that a proxy's readiness is known without connecting to it.
pub fn listening(addr: SocketAddr) -> anyhow::Result<bool> {
    let SocketAddr::V4(v4) = addr else {
        anyhow::bail!("{addr}: the harness listens on IPv4 only");
    };
    // The kernel prints the address as the u32 in host (little-endian) order, then the port.
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&LISTEN)
    }))
}

/// A process to watch: its resident memory and its CPU use over a phase; for a proxy, with the
/// worker processes it forked (nginx's master and worker).
#[derive(Debug, Clone, Copy)]
pub struct Watched {
    pid: u32,
    with_workers: bool,
}

/// CPU time used so far, and when that was read.
pub struct CpuMark {
    ticks: u64,
    at: Instant,
}

/// The kernel's clock tick for /proc times; 100 on every Linux build that matters here.
const TICKS_PER_SECOND: f64 = 100.0;

impl Watched {
    /// A proxy: the process and every process it forked.
    pub fn proxy(pid: u32) -> Watched {
        Watched {
            pid,
            with_workers: true,
        }
    }

    /// This harness alone (the load generator and the app), not the proxies it started.
    pub fn this_process() -> Watched {
        Watched {
            pid: std::process::id(),
            with_workers: false,
        }
    }

    /// The process, and its descendants when they count.
    fn family(self) -> Vec<u32> {
        let mut family = vec![self.pid];
        if self.with_workers {
            family.extend(self.descendants());
        }
        family
    }

    /// Every process below this one, from /proc/PID/task/TID/children; empty once it is gone.
    pub fn descendants(self) -> Vec<u32> {
        let mut found = Vec::new();
        let mut next = vec![self.pid];
        while let Some(pid) = next.pop() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                    found.push(child);
                    next.push(child);
                }
            }
        }
        found
    }

    /// VmRSS in KiB, summed over the process and its workers.
    pub fn rss_kib(self) -> anyhow::Result<u64> {
        self.family().into_iter().map(rss_kib_of).sum()
    }

    pub fn cpu_mark(self) -> anyhow::Result<CpuMark> {
        let ticks = self
            .family()
            .into_iter()
            .map(cpu_ticks_of)
            .sum::<anyhow::Result<u64>>()?;
        Ok(CpuMark {
            ticks,
            at: Instant::now(),
        })
    }

    /// CPU time used since `since` (all cores), in seconds, and the wall time that took.
    pub fn cpu_since(self, since: &CpuMark) -> anyhow::Result<(f64, Duration)> {
        let now = self.cpu_mark()?;
        let wall = now.at.duration_since(since.at).max(Duration::from_millis(1));
        Ok((now.ticks.saturating_sub(since.ticks) as f64 / TICKS_PER_SECOND, wall))
    }
}

fn rss_kib_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}

/// User and system CPU time of one process, in clock ticks.
fn cpu_ticks_of(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    anyhow::ensure!(fields.len() == 2, "unreadable /proc/{pid}/stat");
    Ok(fields[0] + fields[1])
}
