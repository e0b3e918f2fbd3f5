//! `peerguard iptables` against real iptables, and the transparent redirect end to end, in
//! network namespaces that each test creates for itself and always deletes. The host's own
//! netfilter rules and addresses are never touched: every command runs inside a namespace.
//!
//! Needs root and iproute2/iptables (CI runs as root): without them these tests fail loudly.
//!
//! The redirect tests need a listener and a client *inside* namespaces. The crate forbids
//! unsafe code and has no setns binding, so the test binary re-runs itself under
//! `ip netns exec` with `PEERGUARD_NETNS_ROLE` set, and that child plays the listener (which
//! asks `peerguard::net::original_dst`) or the client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const PEERGUARD: &str = env!("CARGO_BIN_EXE_peerguard");
const ROLE_ENV: &str = "PEERGUARD_NETNS_ROLE";
const INBOUND: &str = "[::]:15006";

/// A network namespace of this test run, deleted on drop (even when the test fails).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
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

    fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("`ip netns exec` must run")
    }

    /// Run in the namespace; fail the test with the command's stderr unless it succeeds.
    fn ok(&self, program: &str, args: &[&str]) -> String {
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

    /// The nat table's rules, without iptables-save's timestamped comments.
    fn nat(&self, save: &str) -> String {
        self.ok(save, &["-t", "nat"])
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect()
    }

    fn peerguard(&self, args: &[&str]) -> String {
        let mut full = vec!["iptables"];
        full.extend_from_slice(args);
        self.ok(PEERGUARD, &full)
    }

    /// Start this test binary again inside the namespace, running `test` in `role`.
    fn spawn_role(&self, test: &str, role: &str, arg: &str) -> ChildGuard {
        let exe = std::env::current_exe().expect("the test binary knows its path");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, format!("{role} {arg}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the test binary can run itself");
        ChildGuard(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A child process this test started; killed by its own handle on drop if still running.
struct ChildGuard(Child);

impl ChildGuard {
    /// Wait for a line that holds `prefix` on the child's stdout and return the rest.
    fn line_after(&mut self, prefix: &str) -> String {
        let stdout = self.0.stdout.as_mut().expect("stdout is piped");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line).expect("the child's stdout is readable");
            assert!(read > 0, "the child ended before printing `{prefix}`");
            // libtest prints `test NAME ... ` before the test's own output, on the same line.
            if let Some(start) = line.find(prefix) {
                return line[start + prefix.len()..].trim().to_owned();
            }
        }
    }

    fn finished_ok(mut self) {
        let status = self.0.wait().expect("the child can be waited for");
        assert!(status.success(), "the child failed: {status}");
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// In a child started by `spawn_role`, play the role and return true; otherwise false.
fn played_role() -> bool {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return false;
    };
    let (role, arg) = role.split_once(' ').expect("role and argument");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match role {
        "listen" => runtime.block_on(listen_once(arg.parse().expect("a listen address"))),
        "connect" => runtime.block_on(connect_to(arg.parse().expect("a target address"))),
        other => panic!("unknown role {other}"),
    }
    true
}

/// Listener role: accept one connection, and answer with its original destination and peer.
async fn listen_once(addr: SocketAddr) {
    let listener = peerguard::net::bind_listener(addr).expect("bind the inbound listener");
    println!("READY");
    let (mut stream, peer) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .expect("a connection arrives in time")
        .expect("accept");
    let original = peerguard::net::original_dst(&stream).expect("a redirected connection has an original destination");
    tokio::io::AsyncWriteExt::write_all(&mut stream, format!("{original} {}\n", peer.ip()).as_bytes())
        .await
        .expect("answer");
}

/// Client role: connect, print what the listener answered, or why nothing did.
async fn connect_to(target: SocketAddr) {
    let answer = match peerguard::net::connect_upstream(target, None, Duration::from_secs(5)).await {
        Ok(stream) => {
            let mut stream = stream.into_std().expect("a std stream");
            stream.set_nonblocking(false).expect("blocking mode");
            let mut text = String::new();
            stream.read_to_string(&mut text).expect("read the answer");
            text.trim().to_owned()
        }
        Err(err) => format!("error {:?}", err.kind()),
    };
    println!("ANSWER {answer}");
    std::io::stdout().flush().expect("flush");
}

/// A server namespace with the capture applied and a client namespace, joined by a veth pair
/// whose addresses exist only inside them.
struct Pod {
    server: Netns,
    client: Netns,
}

const SERVER_V4: &str = "10.250.0.1";
const CLIENT_V4: &str = "10.250.0.2";
const SERVER_V6: &str = "fd00:250::1";
const CLIENT_V6: &str = "fd00:250::2";

impl Pod {
    fn new(tag: &str) -> Self {
        let server = Netns::new(&format!("{tag}s"));
        let client = Netns::new(&format!("{tag}c"));
        server.ok(
            "ip",
            &[
                "link",
                "add",
                "pg0",
                "type",
                "veth",
                "peer",
                "name",
                "pg1",
                "netns",
                &client.name,
            ],
        );
        for (netns, link, v4, v6) in [
            (&server, "pg0", SERVER_V4, SERVER_V6),
            (&client, "pg1", CLIENT_V4, CLIENT_V6),
        ] {
            netns.ok("ip", &["addr", "add", &format!("{v4}/24"), "dev", link]);
            netns.ok("ip", &["-6", "addr", "add", &format!("{v6}/64"), "dev", link, "nodad"]);
            netns.ok("ip", &["link", "set", link, "up"]);
        }
        server.peerguard(&["--apply", "--ipv6"]);
        Self { server, client }
    }

    /// Connect from the client namespace to `target`; the listener answers on 15006.
    fn connect(&self, test: &str, target: &str) -> String {
        let mut listener = self.server.spawn_role(test, "listen", INBOUND);
        listener.line_after("READY");
        let mut client = self.client.spawn_role(test, "connect", target);
        let answer = client.line_after("ANSWER ");
        client.finished_ok();
        listener.finished_ok();
        answer
    }

    /// Connect from the client namespace to `target`, where nothing may answer.
    fn connect_unanswered(&self, test: &str, target: &str) -> String {
        let mut client = self.client.spawn_role(test, "connect", target);
        let answer = client.line_after("ANSWER ");
        client.finished_ok();
        answer
    }
}

#[test]
fn applying_twice_gives_the_same_rules_and_clean_restores_the_original() {
    if played_role() {
        return;
    }
    let netns = Netns::new("apply");
    // Someone else's rules, which apply and clean must leave alone.
    netns.ok("iptables", &["-t", "nat", "-N", "OTHER"]);
    netns.ok(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "9",
            "-j",
            "OTHER",
        ],
    );
    for save in ["iptables-save", "ip6tables-save"] {
        let original = netns.nat(save);
        netns.peerguard(&["--apply", "--ipv6"]);
        let applied = netns.nat(save);
        netns.peerguard(&["--apply", "--ipv6"]);
        assert_eq!(netns.nat(save), applied, "{save}: a second apply changed the rules");
        for rule in [
            ":ISTIO_INBOUND - [0:0]",
            ":ISTIO_IN_REDIRECT - [0:0]",
            "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        ] {
            assert_eq!(
                applied.lines().filter(|line| *line == rule).count(),
                1,
                "{save}: `{rule}` in\n{applied}"
            );
        }
        netns.peerguard(&["--clean", "--ipv6"]);
        assert_eq!(netns.nat(save), original, "{save}: clean did not restore the original");
    }
    assert!(netns.nat("iptables-save").contains("-j OTHER"));
}

#[test]
fn listed_ports_each_get_one_jump_and_nothing_else_is_captured() {
    if played_role() {
        return;
    }
    let netns = Netns::new("list");
    netns.peerguard(&["--apply", "--inbound-ports", "80,443", "--exclude-inbound-ports", "22"]);
    let inbound: Vec<String> = netns
        .nat("iptables-save")
        .lines()
        .filter(|line| line.starts_with("-A ISTIO_INBOUND"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        inbound,
        [
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 80 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 443 -j ISTIO_IN_REDIRECT",
        ]
    );
}

#[test]
fn bad_ports_are_refused_before_anything_is_applied() {
    if played_role() {
        return;
    }
    let netns = Netns::new("bad");
    let before = netns.nat("iptables-save");
    let output = netns.exec(PEERGUARD, &["iptables", "--apply", "--inbound-ports", "80,http"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`http` is not a port"), "{stderr}");
    assert_eq!(netns.nat("iptables-save"), before);
}

#[test]
fn an_ipv4_connection_to_a_pod_port_lands_on_the_inbound_listener() {
    const TEST: &str = "an_ipv4_connection_to_a_pod_port_lands_on_the_inbound_listener";
    if played_role() {
        return;
    }
    let pod = Pod::new("v4");
    // The dual-stack listener sees a v4-mapped peer; the original destination is plain IPv4.
    assert_eq!(
        pod.connect(TEST, &format!("{SERVER_V4}:8080")),
        format!("{SERVER_V4}:8080 ::ffff:{CLIENT_V4}")
    );
    // The health port is excluded: nothing listens there, so the connection is refused
    // instead of landing on 15006.
    assert_eq!(
        pod.connect_unanswered(TEST, &format!("{SERVER_V4}:15021")),
        "error ConnectionRefused"
    );
}

#[test]
fn an_ipv6_connection_to_a_pod_port_lands_on_the_inbound_listener() {
    const TEST: &str = "an_ipv6_connection_to_a_pod_port_lands_on_the_inbound_listener";
    if played_role() {
        return;
    }
    let pod = Pod::new("v6");
    assert_eq!(
        pod.connect(TEST, &format!("[{SERVER_V6}]:8080")),
        format!("[{SERVER_V6}]:8080 {CLIENT_V6}")
    );
}

#[test]
fn without_net_admin_the_error_names_the_missing_capability() {
    if played_role() {
        return;
    }
    let netns = Netns::new("priv");
    // An unprivileged uid (nobody), no capabilities: what an init container without NET_ADMIN gets.
    let output = netns.exec(
        "setpriv",
        &[
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            PEERGUARD,
            "iptables",
            "--apply",
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("run as root with the NET_ADMIN and NET_RAW capabilities"),
        "{stderr}"
    );
}

#[test]
fn without_iptables_installed_the_error_names_the_package() {
    if played_role() {
        return;
    }
    let output = Command::new(PEERGUARD)
        .args(["iptables", "--apply"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("peerguard runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`iptables-save` not found: install the `iptables` package"),
        "{stderr}"
    );
}
