//! `peerguard iptables` against real iptables, and the transparent redirect end to end, in
//! network namespaces that each test creates for itself and always deletes. The host's own
//! netfilter rules and addresses are never touched: every command runs inside a namespace.
//!
//! Needs root and iproute2/iptables (CI runs as root): without them these tests fail loudly.
//!
//! The redirect tests need a listener and a client *inside* namespaces: the test binary re-runs
//! itself there (see `support::netns`) to play the listener (which asks
//! `peerguard::net::original_dst`) or the client.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::netns::{self, join, LinkEnd, Netns};

const PEERGUARD: &str = env!("CARGO_BIN_EXE_peerguard");
const INBOUND: &str = "[::]:15006";
/// How long a role may take to get ready or to answer.
const STEP: Duration = Duration::from_secs(20);

/// The nat table's rules, without iptables-save's timestamped comments.
fn nat(netns: &Netns, save: &str) -> String {
    netns
        .ok(save, &["-t", "nat"])
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// `peerguard iptables ARGS` in the namespace, which must succeed.
fn peerguard_iptables(netns: &Netns, args: &[&str]) -> String {
    let mut full = vec!["iptables"];
    full.extend_from_slice(args);
    netns.ok(PEERGUARD, &full)
}

/// In a child started by `spawn_role`, play the listener or the client and return true.
fn played_role() -> bool {
    netns::played_role(|role, arg| async move {
        match role.as_str() {
            "listen" => listen_once(arg.parse().expect("a listen address")).await,
            "connect" => connect_to(arg.parse().expect("a target address")).await,
            other => panic!("unknown role {other}"),
        }
    })
}

/// Listener role: accept one connection, and answer with its original destination and peer.
async fn listen_once(addr: SocketAddr) {
    let listener = peerguard::net::bind_listener(addr).expect("bind the inbound listener");
    println!("READY");
    let (mut stream, peer) = tokio::time::timeout(STEP, listener.accept())
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

/// A server namespace with the capture applied and a client namespace, joined by a veth pair.
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
        join(
            LinkEnd {
                netns: &server,
                link: "pg0",
                v4: SERVER_V4,
                v6: SERVER_V6,
            },
            LinkEnd {
                netns: &client,
                link: "pg1",
                v4: CLIENT_V4,
                v6: CLIENT_V6,
            },
        );
        peerguard_iptables(&server, &["--apply", "--ipv6"]);
        Self { server, client }
    }

    /// Connect from the client namespace to `target`; the listener answers on 15006.
    fn connect(&self, test: &str, target: &str) -> String {
        let mut listener = self.server.spawn_role(test, "listen", INBOUND);
        listener.line_after("READY", STEP);
        let answer = self.connect_unanswered(test, target);
        listener.finished_ok();
        answer
    }

    /// Connect from the client namespace to `target`, where nothing may answer.
    fn connect_unanswered(&self, test: &str, target: &str) -> String {
        let mut client = self.client.spawn_role(test, "connect", target);
        let answer = client.line_after("ANSWER ", STEP);
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
        let original = nat(&netns, save);
        peerguard_iptables(&netns, &["--apply", "--ipv6"]);
        let applied = nat(&netns, save);
        peerguard_iptables(&netns, &["--apply", "--ipv6"]);
        assert_eq!(nat(&netns, save), applied, "{save}: a second apply changed the rules");
        for rule in [
            ":ISTIO_INBOUND - [0:0]",
            ":ISTIO_IN_REDIRECT - [0:0]",
            "-A PREROUTING -p tcp -m comment --comment peerguard -j ISTIO_INBOUND",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -m comment --comment peerguard -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -m comment --comment peerguard -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m comment --comment peerguard -j ISTIO_IN_REDIRECT",
            "-A ISTIO_IN_REDIRECT -p tcp -m comment --comment peerguard -j REDIRECT --to-ports 15006",
        ] {
            assert_eq!(
                applied.lines().filter(|line| *line == rule).count(),
                1,
                "{save}: `{rule}` in\n{applied}"
            );
        }
        peerguard_iptables(&netns, &["--clean", "--ipv6"]);
        assert_eq!(
            nat(&netns, save),
            original,
            "{save}: clean did not restore the original"
        );
    }
    assert!(nat(&netns, "iptables-save").contains("-j OTHER"));
}

#[test]
fn listed_ports_each_get_one_jump_and_nothing_else_is_captured() {
    if played_role() {
        return;
    }
    let netns = Netns::new("list");
    peerguard_iptables(
        &netns,
        &["--apply", "--inbound-ports", "80,443", "--exclude-inbound-ports", "22"],
    );
    let inbound: Vec<String> = nat(&netns, "iptables-save")
        .lines()
        .filter(|line| line.starts_with("-A ISTIO_INBOUND"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        inbound,
        [
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 80 -m comment --comment peerguard -j ISTIO_IN_REDIRECT",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 443 -m comment --comment peerguard -j ISTIO_IN_REDIRECT",
        ]
    );
}

#[test]
fn bad_ports_are_refused_before_anything_is_applied() {
    if played_role() {
        return;
    }
    let netns = Netns::new("bad");
    let before = nat(&netns, "iptables-save");
    let output = netns.exec(PEERGUARD, &["iptables", "--apply", "--inbound-ports", "80,http"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`http` is not a port"), "{stderr}");
    assert_eq!(nat(&netns, "iptables-save"), before);
}

#[test]
fn a_port_both_captured_and_excluded_is_refused_before_anything_is_applied() {
    if played_role() {
        return;
    }
    let netns = Netns::new("contra");
    let before = nat(&netns, "iptables-save");
    let output = netns.exec(
        PEERGUARD,
        &[
            "iptables",
            "--apply",
            "--inbound-ports",
            "8080",
            "--exclude-inbound-ports",
            "8080",
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("port 8080 is in both --inbound-ports and --exclude-inbound-ports"),
        "{stderr}"
    );
    assert_eq!(nat(&netns, "iptables-save"), before);
}

/// What istio-init leaves in a pod's nat table: `istio-iptables -p 15001 -z 15006 -u 1337
/// -m REDIRECT -i '*' -b '*' -d 15090,15021,15020`, written as an iptables-restore script after
/// istio's `tools/istio-iptables/pkg/capture/testdata/inbound-ports-wildcard.golden` with the
/// `-d` exclusions that the injector passes.
const ISTIO_INIT: &str = "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";

/// Load `script` with `program --noflush` in the namespace.
fn restore(netns: &Netns, program: &str, script: &str) {
    let mut child = netns
        .command(program)
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run iptables-restore");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the script");
    assert!(child.wait().expect("wait").success(), "{program} refused:\n{script}");
}

#[test]
fn istio_inits_capture_is_neither_rewritten_nor_deleted() {
    if played_role() {
        return;
    }
    let netns = Netns::new("istio");
    restore(&netns, "iptables-restore", ISTIO_INIT);
    let (v4, v6) = (nat(&netns, "iptables-save"), nat(&netns, "ip6tables-save"));
    for args in [["--apply", "--ipv6"], ["--clean", "--ipv6"]] {
        let output = netns.exec(PEERGUARD, &["iptables", args[0], args[1]]);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for named in [
            "ISTIO_INBOUND, ISTIO_IN_REDIRECT, ISTIO_OUTPUT, ISTIO_REDIRECT (nat table)",
            "sidecar.istio.io/inject: \"false\"",
        ] {
            assert!(stderr.contains(named), "{args:?}: {named} in {stderr}");
        }
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        // Neither family changed: IPv4 was inspected (and refused) before IPv6 was touched.
        assert_eq!(nat(&netns, "iptables-save"), v4, "{args:?}");
        assert_eq!(nat(&netns, "ip6tables-save"), v6, "{args:?}");
    }
}

#[test]
fn a_rule_someone_added_to_our_chain_makes_apply_and_clean_refuse() {
    if played_role() {
        return;
    }
    let netns = Netns::new("mixed");
    peerguard_iptables(&netns, &["--apply"]);
    netns.ok(
        "iptables",
        &[
            "-t",
            "nat",
            "-I",
            "ISTIO_INBOUND",
            "-p",
            "tcp",
            "--dport",
            "22",
            "-j",
            "RETURN",
        ],
    );
    let before = nat(&netns, "iptables-save");
    for flag in ["--apply", "--clean"] {
        let output = netns.exec(PEERGUARD, &["iptables", flag]);
        assert!(!output.status.success(), "{flag} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("(ISTIO_INBOUND (nat table))"), "{stderr}");
        assert_eq!(nat(&netns, "iptables-save"), before, "{flag}");
    }
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
