//! The README's first command: `peerguard demo` starts a sandbox and prints commands. This runs
//! the real binary, runs every printed command exactly as printed, from a fresh shell whose PATH
//! has no `peerguard` (as after `cargo run`), with the real `openssl s_client` and `curl`, and
//! checks what each shows and what peerguard's access log says about it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_peerguard");

/// Kills the demo on every exit path, panics included.
struct Demo {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Blocks of ports below Linux's ephemeral range (32768+), where no outgoing connection can
/// hold one; the demo needs base..base+1100.
fn base_ports() -> impl Iterator<Item = u16> {
    let first = std::process::id() as u16 % 10;
    (0..10).map(move |i| 20000 + (first + i) % 10 * 1200)
}

/// A running demo with what it printed: the commands by section number, and its closing
/// `peerguard check` command.
struct Started {
    demo: Demo,
    commands: Vec<(u32, String)>,
    check: String,
}

/// Starts the demo (with `extra` flags) on the first free block of ports from the `first`th;
/// `label` keeps its directory and log apart from another test's demo, and a different `first`
/// its ports.
fn start_demo(label: &str, extra: &[&str], first: usize) -> Started {
    for base in base_ports().skip(first).take(3) {
        if let Some(started) = start_demo_at(label, base, extra) {
            return started;
        }
    }
    panic!(
        "the demo did not start on any of three port blocks: {}",
        log_path(label).display()
    );
}

/// Starts the demo at `base`; `None` if it exited before printing its commands (a port in use).
fn start_demo_at(label: &str, base: u16, extra: &[&str]) -> Option<Started> {
    let dir = std::env::temp_dir().join(format!("peerguard-demo-test-{label}-{}", std::process::id()));
    let log = std::fs::File::create(log_path(label)).expect("log file");
    let mut child = Command::new(BIN)
        .args(["demo", "--dir", dir.to_str().unwrap(), "--base-port", &base.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start peerguard demo");
    let stdout = child.stdout.take().expect("stdout");
    let demo = Demo { child, dir };

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut commands = Vec::new();
    let mut section = 0;
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            // It exited: a port of the block is taken.
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the demo prints its instructions within 20 s"),
        };
        if let Some(rest) = line.strip_prefix("# ") {
            section = rest.split('.').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if section > 0 && !line.trim().is_empty() && !is_check(&line) {
            commands.push((section, line.clone()));
        }
        if is_check(&line) {
            return Some(Started {
                demo,
                commands,
                check: line,
            });
        }
    }
}

fn log_path(label: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("peerguard-demo-test-{label}-{}.log", std::process::id()))
}

/// The closing `peerguard check` command, which names the binary by its path.
fn is_check(line: &str) -> bool {
    line.contains(" check --policy ")
}

/// PATH without any directory that holds a `peerguard`: what a person has after `cargo run`.
fn path_without_peerguard() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<_> = std::env::split_paths(&path)
        .filter(|dir| !dir.join("peerguard").exists())
        .collect();
    std::env::join_paths(dirs)
        .expect("PATH entries")
        .into_string()
        .expect("a UTF-8 PATH")
}

/// Runs one printed command the way a person would paste it into a fresh shell, bounded in
/// time.
fn run(command: &str) -> String {
    let output = Command::new("timeout")
        .args(["20", "sh", "-c", command])
        .env_clear()
        .env("PATH", path_without_peerguard())
        .stdin(Stdio::null())
        .output()
        .expect("run a demo command");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_demo_shows_mtls_passthrough_and_refusal_with_real_clients() {
    let Started { demo, commands, check } = start_demo("files", &[], 0);
    let expectations: [(u32, &[&str]); 8] = [
        (1, &["you reached me over plaintext"]),
        (2, &["you reached me over the app's own TLS"]),
        (3, &["you reached me over plaintext"]),
        (4, &["curl exit: 56", "you reached me over plaintext"]),
        (5, &["you reached me over the app's own TLS"]),
        (6, &["openssl exit: 1"]),
        (
            7,
            &[
                "STATUS",
                "OK",
                "STRICT",
                "CONFLICT",
                "DISABLE",
                "ISTIO_MUTUAL",
                "demo/echo",
            ],
        ),
        (8, &["WOULD BE REFUSED", "sources to fix first", "127.0.0.1"]),
    ];
    for (section, wanted) in expectations {
        let output: String = commands
            .iter()
            .filter(|(s, _)| *s == section)
            .map(|(_, c)| run(c))
            .collect();
        for text in wanted {
            assert!(
                output.contains(text),
                "section {section}: expected {text:?} in:\n{output}"
            );
        }
    }
    // The audit after sections 1 to 6: on the PERMISSIVE port two mTLS calls that pass (the
    // intruder's is denied by authorization, not by peer authentication), the app's own TLS
    // twice, plaintext once; on the DISABLE port the app's own TLS once. The STRICT port is not
    // audited.
    let audit: String = commands.iter().filter(|(s, _)| *s == 8).map(|(_, c)| run(c)).collect();
    let summary_rows: Vec<Vec<&str>> = audit
        .lines()
        .map(|line| line.split_whitespace().skip(1).collect())
        .filter(|words: &Vec<&str>| words.len() == 7 && ["PERMISSIVE", "DISABLE", "STRICT"].contains(&words[0]))
        .collect();
    assert_eq!(
        summary_rows,
        [
            ["PERMISSIVE", "5", "2", "1", "(20.0%)", "2", "(40.0%)"],
            ["DISABLE", "1", "0", "0", "(0.0%)", "1", "(100.0%)"],
        ],
        "{audit}"
    );
    for (kind, verdict) in [("plaintext", "refuse"), ("tls", "unknown")] {
        assert!(
            audit.lines().any(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                words.starts_with(&["127.0.0.1", kind, verdict])
            }),
            "a {kind} source to fix:\n{audit}"
        );
    }

    assert!(
        check.starts_with(&format!("{BIN} check ")),
        "the check command names the running binary: {check}"
    );
    assert!(
        run("command -v peerguard; echo exit $?").contains("exit 1"),
        "peerguard is not on PATH"
    );
    let check_output = run(&check);
    assert!(
        check_output.contains("STRICT") && check_output.contains("DISABLE"),
        "{check_output}"
    );

    let log_path = log_path("files");
    let log = std::fs::read_to_string(&log_path).expect("demo log");
    for reason in [
        "reason=mtls",
        "reason=passthrough_tls",
        "reason=passthrough_plaintext",
        "reason=plaintext_on_strict",
        "reason=passthrough_disabled",
        "reason=denied_by_policy",
        "authz_policy=demo/deny-intruder#0",
        "authz_policy=demo/echo-callers#0",
    ] {
        assert!(log.contains(reason), "the access log has {reason}:\n{log}");
    }
    assert!(
        log.contains("peer=spiffe://cluster.local/ns/demo/sa/client"),
        "the log names the mesh peer:\n{log}"
    );
    drop(demo);
    let _ = std::fs::remove_file(log_path);
}

#[test]
fn the_mesh_ca_demo_gets_its_certificate_over_grpc_and_serves_mtls_with_it() {
    let Started { demo, commands, .. } = start_demo("mesh-ca", &["--mesh-ca"], 5);
    let section = |n: u32| -> String { commands.iter().filter(|(s, _)| *s == n).map(|(_, c)| run(c)).collect() };
    let mtls = section(1);
    assert!(mtls.contains("you reached me over plaintext"), "{mtls}");
    let dump = section(9);
    assert!(
        dump.contains("\"kind\": \"mesh_ca\"") && dump.contains("spiffe://cluster.local/ns/demo/sa/echo"),
        "{dump}"
    );
    let log = std::fs::read_to_string(log_path("mesh-ca")).expect("demo log");
    assert!(
        log.contains("issued a workload certificate spiffe_id=spiffe://cluster.local/ns/demo/sa/echo"),
        "the demo's CA issued over gRPC:\n{log}"
    );
    assert!(log.contains("peer=spiffe://cluster.local/ns/demo/sa/client"), "{log}");
    drop(demo);
    let _ = std::fs::remove_file(log_path("mesh-ca"));
}

#[test]
fn a_taken_base_port_is_reported_once_with_the_fix_and_leaves_no_files_behind() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let taken = holder.local_addr().unwrap().port();
    let tmp = std::env::temp_dir().join(format!("peerguard-demo-taken-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let output = Command::new(BIN)
        .args(["demo", "--base-port", &(taken - 80).to_string()])
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .output()
        .expect("run peerguard demo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    let _ = std::fs::remove_dir_all(&tmp);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
    assert!(stderr.contains(&format!("port 127.0.0.1:{taken} is taken")), "{stderr}");
    assert!(stderr.contains("--base-port"), "the hint: {stderr}");
    assert!(left.is_empty(), "the demo left {left:?} in its temp directory");
}
