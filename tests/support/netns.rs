//! Network namespaces for tests that need real iptables and real clients: each test makes its
//! own (named after the test run's pid), joins them with veth pairs whose addresses exist only
//! inside them, and deletes them on drop, even when the test fails. The host's own netfilter
//! rules and addresses are never touched: every command runs inside a namespace.
//!
//! The crate forbids unsafe code and has no setns binding, so a test that needs Rust code
//! *inside* a namespace re-runs its own test binary under `ip netns exec` with [`ROLE_ENV`]
//! set; in that child, [`played_role`] plays the part instead of running the test.
//!
//! Needs root and iproute2 (CI runs as root): without them these helpers fail loudly.
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// Set in a child started by [`Netns::spawn_role`]: `"<role> <argument>"`.
pub const ROLE_ENV: &str = "PEERGUARD_NETNS_ROLE";

/// In a child started by [`Netns::spawn_role`], play the role (`play(role, argument)` on a
/// tokio runtime) and return true; in a normal test run, return false at once.
pub fn played_role<F: Future<Output = ()>>(play: impl FnOnce(String, String) -> F) -> bool {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return false;
    };
    let (role, arg) = role.split_once(' ').expect("a role and its argument");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(play(role.to_owned(), arg.to_owned()));
    true
}

/// A network namespace of this test run, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace `pg-<tag>-<pid>` with `lo` up.
    pub fn new(tag: &str) -> Self {
        let name = format!("pg-{tag}-{}", std::process::id());
        let output = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("`ip` (iproute2) must be installed: apt-get install iproute2");
        assert!(
            output.status.success(),
            "`ip netns add {name}` failed; these tests need root: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let netns = Self { name };
        netns.ok("ip", &["link", "set", "lo", "up"]);
        netns
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .expect("`ip netns exec` must run")
    }

    /// Run in the namespace; fail the test with the command's stderr unless it succeeds.
    pub fn ok(&self, program: &str, args: &[&str]) -> String {
        let output = self.exec(program, args);
        assert!(
            output.status.success(),
            "`{program} {}` in {} failed: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Start `program` in the namespace, its output read line by line.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Process {
        let mut command = self.command(program);
        command.args(args);
        Process::spawn(command)
    }

    /// Start this test binary again inside the namespace, playing `role` with `arg` in `test`.
    pub fn spawn_role(&self, test: &str, role: &str, arg: &str) -> Process {
        let exe = std::env::current_exe().expect("the test binary knows its path");
        let mut command = self.command(&exe.to_string_lossy());
        command
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, format!("{role} {arg}"));
        Process::spawn(command)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// One end of a veth link: its namespace, interface name and addresses.
pub struct LinkEnd<'a> {
    pub netns: &'a Netns,
    pub link: &'a str,
    pub v4: &'a str,
    pub v6: &'a str,
}

/// Joins two namespaces with a veth pair: `/24` and `/64` addresses, no duplicate address
/// detection (so IPv6 works at once), both ends up.
pub fn join(a: LinkEnd, b: LinkEnd) {
    a.netns.ok(
        "ip",
        &[
            "link",
            "add",
            a.link,
            "type",
            "veth",
            "peer",
            "name",
            b.link,
            "netns",
            &b.netns.name,
        ],
    );
    for end in [a, b] {
        end.netns
            .ok("ip", &["addr", "add", &format!("{}/24", end.v4), "dev", end.link]);
        end.netns.ok(
            "ip",
            &["-6", "addr", "add", &format!("{}/64", end.v6), "dev", end.link, "nodad"],
        );
        end.netns.ok("ip", &["link", "set", end.link, "up"]);
    }
}

/// A child process this test started, its stdout and stderr read line by line (by two
/// threads, so neither pipe fills up and blocks it); killed by its own handle on drop.
pub struct Process {
    child: Child,
    lines: Receiver<String>,
}

impl Process {
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        forward_lines(stdout, sender.clone());
        forward_lines(stderr, sender);
        Self { child, lines }
    }

    /// The next line of output, or `None` once the process closed its output or `timeout` passed.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The rest of the first line holding `prefix`, waiting at most `timeout` in all.
    pub fn line_after(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.next_line(left) else {
                panic!("no line with `{prefix}` within {timeout:?} (the process ended or is stuck)");
            };
            // libtest prints `test NAME ... ` before a role's own output, on the same line.
            if let Some(start) = line.find(prefix) {
                return line[start + prefix.len()..].trim().to_owned();
            }
        }
    }

    /// Wait for the process to end by itself and require success.
    pub fn finished_ok(mut self) {
        let status = self.child.wait().expect("the child can be waited for");
        assert!(status.success(), "the child failed: {status}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn forward_lines(pipe: impl Read + Send + 'static, sender: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
}

/// Retry `attempt` until it gives an answer, at most `tries` times, `pause` apart; fail the test
/// naming `what` if it never does.
pub fn poll<T>(what: &str, tries: u32, pause: Duration, mut attempt: impl FnMut() -> Option<T>) -> T {
    for _ in 0..tries {
        if let Some(answer) = attempt() {
            return answer;
        }
        thread::sleep(pause);
    }
    panic!("{what}: no answer after {tries} tries {pause:?} apart");
}
