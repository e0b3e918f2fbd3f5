//! The inbound capture rules, as `iptables-restore` scripts. Pure: text in, text out, so the
//! whole rule set is a unit test and `--apply` / `--clean` only feed these scripts to the
//! real tools.
//!
//! What is ported from istio-iptables (`tools/istio-iptables/pkg/capture/run.go`, REDIRECT
//! mode): the nat-table chains `ISTIO_INBOUND` and `ISTIO_IN_REDIRECT`, the PREROUTING jump,
//! RETURN for excluded ports with `*`, a jump per port with a list, and the REDIRECT to the
//! inbound port. What is not: everything outbound (`ISTIO_OUTPUT`, `ISTIO_REDIRECT`, DNS,
//! TPROXY, interface and CIDR exclusions). peerguard only captures inbound traffic, and
//! PREROUTING never sees connections made inside the pod (conntrack has already decided their
//! NAT in OUTPUT), so peerguard's own upstream connections cannot loop and need neither
//! istio's `-s 127.0.0.6/32 -j RETURN` guard nor its `--uid-owner` rules: those live in
//! `ISTIO_OUTPUT`, which only outbound capture needs.
//!
//! Every rule carries the comment `peerguard` (see `saved`): it is how `--apply` tells our
//! rules from Istio's, and how `--clean` removes only ours.

use std::collections::BTreeSet;

use super::saved::{Table, COMMENT, INBOUND_CHAIN, REDIRECT_CHAIN};
use crate::cli::IptablesArgs;

/// Bad port arguments.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortsError {
    #[error("--inbound-ports is empty: give `*` for all ports or a comma list such as 80,443")]
    Empty,
    #[error("`{0}` is not a port (1..65535)")]
    NotAPort(String),
    #[error("port {0} is peerguard's own and is never redirected; remove it from --inbound-ports")]
    OwnPort(u16),
    #[error(
        "port {0} is in both --inbound-ports and --exclude-inbound-ports: say whether it is captured \
         (enforced by peerguard) or not, in one of them"
    )]
    IncludedAndExcluded(u16),
    #[error(
        "--inbound-port is ambiguous and no longer taken: for the port peerguard's transparent listener \
         (`run --inbound`) is on, the REDIRECT target, use --redirect-port {0}; for the pod ports to \
         capture, use --inbound-ports"
    )]
    RenamedInboundPort(String),
}

/// Which inbound ports are redirected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every port except the excluded ones.
    All { excluded: BTreeSet<u16> },
    /// Only these ports (in the order given, duplicates dropped).
    Listed(Vec<u16>),
}

/// A validated inbound capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub ports: InboundPorts,
    /// peerguard's transparent listener port, the REDIRECT target.
    pub redirect_port: u16,
}

impl Capture {
    /// Validate the command line. peerguard's own ports (inbound, admin, health, metrics) are
    /// always excluded with `*`: redirecting them would make peerguard refuse every connection
    /// to them as `own_port`, and the kubelet's probes and Prometheus must reach them as is. A port
    /// both listed and excluded is an error rather than silently not captured: the person who
    /// listed it expects it enforced.
    pub fn from_args(args: &IptablesArgs) -> Result<Self, PortsError> {
        if let Some(old) = &args.renamed_inbound_port {
            return Err(PortsError::RenamedInboundPort(old.clone()));
        }
        let redirect_port = nonzero(args.redirect_port)?;
        let own = [
            redirect_port,
            nonzero(args.admin_port)?,
            nonzero(args.health_port)?,
            nonzero(args.metrics_port)?,
        ];
        let mut excluded_by_flag = BTreeSet::new();
        for &port in &args.exclude_inbound_ports {
            excluded_by_flag.insert(nonzero(port)?);
        }
        let text = args.inbound_ports.trim();
        let ports = if text == "*" {
            let mut excluded = excluded_by_flag;
            excluded.extend(own);
            InboundPorts::All { excluded }
        } else {
            let items: Vec<&str> = text.split(',').map(str::trim).filter(|item| !item.is_empty()).collect();
            if items.is_empty() {
                return Err(PortsError::Empty);
            }
            let mut listed = Vec::new();
            for item in items {
                let port = item
                    .parse::<u16>()
                    .ok()
                    .filter(|&port| port != 0)
                    .ok_or_else(|| PortsError::NotAPort(item.to_owned()))?;
                if own.contains(&port) {
                    return Err(PortsError::OwnPort(port));
                }
                if excluded_by_flag.contains(&port) {
                    return Err(PortsError::IncludedAndExcluded(port));
                }
                if !listed.contains(&port) {
                    listed.push(port);
                }
            }
            InboundPorts::Listed(listed)
        };
        Ok(Self { ports, redirect_port })
    }
}

fn nonzero(port: u16) -> Result<u16, PortsError> {
    if port == 0 {
        Err(PortsError::NotAPort(port.to_string()))
    } else {
        Ok(port)
    }
}

/// `-A CHAIN MATCHES -m comment --comment peerguard -j TARGET`: one of our rules.
fn rule(chain: &str, matches: &str, target: &str) -> String {
    format!("-A {chain} {matches} -m comment --comment {COMMENT} -j {target}")
}

/// The script `peerguard iptables` prints: the whole capture for a nat table that has none of
/// it yet, loadable with `iptables-restore --noflush` (and `ip6tables-restore --noflush`).
pub fn print_script(capture: &Capture) -> String {
    let mut script = String::from(
        "# peerguard inbound capture (istio-iptables compatible, nat table).\n\
         # Load with `iptables-restore --noflush` (and `ip6tables-restore --noflush` for IPv6),\n\
         # or run `peerguard iptables --apply`, which is idempotent and refuses to touch Istio's rules.\n",
    );
    script.push_str(&apply_script(capture, None));
    script
}

/// The script that brings a nat table (`None`: there is none yet) to exactly our capture: our
/// chains are (re)created and flushed before they are filled, and the PREROUTING jump is added
/// only if it is missing, so applying twice leaves the same rule set. The caller has checked
/// that nothing foreign sits in our chains ([`super::saved::foreign_chains`]).
pub fn apply_script(capture: &Capture, nat: Option<&Table>) -> String {
    let mut lines = vec![
        "*nat".to_owned(),
        format!(":{INBOUND_CHAIN} - [0:0]"),
        format!(":{REDIRECT_CHAIN} - [0:0]"),
        format!("-F {INBOUND_CHAIN}"),
        format!("-F {REDIRECT_CHAIN}"),
    ];
    if our_jumps(nat).next().is_none() {
        lines.push(rule("PREROUTING", "-p tcp", INBOUND_CHAIN));
    }
    match &capture.ports {
        InboundPorts::All { excluded } => {
            for port in excluded {
                lines.push(rule(INBOUND_CHAIN, &format!("-p tcp --dport {port}"), "RETURN"));
            }
            lines.push(rule(INBOUND_CHAIN, "-p tcp", REDIRECT_CHAIN));
        }
        InboundPorts::Listed(ports) => {
            for port in ports {
                lines.push(rule(INBOUND_CHAIN, &format!("-p tcp --dport {port}"), REDIRECT_CHAIN));
            }
        }
    }
    lines.push(rule(
        REDIRECT_CHAIN,
        "-p tcp",
        &format!("REDIRECT --to-ports {}", capture.redirect_port),
    ));
    lines.push("COMMIT".to_owned());
    lines.join("\n") + "\n"
}

/// The script that removes what [`apply_script`] added: each of our rules outside our chains
/// (the PREROUTING jump), deleted by its saved spec, then our chains, which hold only our rules
/// (the caller has checked). A chain of ours that holds none of our rules is not known to be
/// ours and stays. `None` when there is nothing of ours, so cleaning twice is fine.
pub fn clean_script(nat: Option<&Table>) -> Option<String> {
    let nat = nat?;
    let mut lines = vec!["*nat".to_owned()];
    lines.extend(our_jumps(Some(nat)).map(|line| line.replacen("-A", "-D", 1)));
    let ours: Vec<&str> = [INBOUND_CHAIN, REDIRECT_CHAIN]
        .into_iter()
        .filter(|&chain| nat.has_chain(chain) && nat.rules.iter().any(|rule| rule.chain == chain && rule.ours))
        .collect();
    // Flush both before deleting either: ISTIO_INBOUND's rules reference ISTIO_IN_REDIRECT.
    lines.extend(ours.iter().map(|chain| format!("-F {chain}")));
    lines.extend(ours.iter().map(|chain| format!("-X {chain}")));
    if lines.len() == 1 {
        return None;
    }
    lines.push("COMMIT".to_owned());
    Some(lines.join("\n") + "\n")
}

/// Our rules in chains that are not ours: the PREROUTING jump, as saved.
fn our_jumps<'t>(nat: Option<&'t Table>) -> impl Iterator<Item = &'t str> {
    nat.into_iter().flat_map(|nat| {
        nat.rules
            .iter()
            .filter(|rule| rule.ours && rule.chain != INBOUND_CHAIN && rule.chain != REDIRECT_CHAIN)
            .map(|rule| rule.line)
    })
}

#[cfg(test)]
mod tests {
    use super::super::saved::{nat, tables};
    use super::*;

    fn args(inbound_ports: &str, exclude: &[u16]) -> IptablesArgs {
        IptablesArgs {
            apply: false,
            clean: false,
            inbound_ports: inbound_ports.to_owned(),
            exclude_inbound_ports: exclude.to_vec(),
            redirect_port: 15006,
            renamed_inbound_port: None,
            admin_port: 15000,
            health_port: 15021,
            metrics_port: 15090,
            ipv6: false,
        }
    }

    fn rules(capture: &Capture) -> Vec<String> {
        apply_script(capture, None).lines().map(str::to_owned).collect()
    }

    #[test]
    fn all_ports_are_captured_except_peerguards_own_and_the_excluded() {
        let capture = Capture::from_args(&args("*", &[22])).unwrap();
        assert_eq!(
            rules(&capture),
            [
                "*nat",
                ":ISTIO_INBOUND - [0:0]",
                ":ISTIO_IN_REDIRECT - [0:0]",
                "-F ISTIO_INBOUND",
                "-F ISTIO_IN_REDIRECT",
                "-A PREROUTING -p tcp -m comment --comment peerguard -j ISTIO_INBOUND",
                "-A ISTIO_INBOUND -p tcp --dport 22 -m comment --comment peerguard -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15000 -m comment --comment peerguard -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15006 -m comment --comment peerguard -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15021 -m comment --comment peerguard -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15090 -m comment --comment peerguard -j RETURN",
                "-A ISTIO_INBOUND -p tcp -m comment --comment peerguard -j ISTIO_IN_REDIRECT",
                "-A ISTIO_IN_REDIRECT -p tcp -m comment --comment peerguard -j REDIRECT --to-ports 15006",
                "COMMIT",
            ]
        );
    }

    #[test]
    fn every_rule_we_write_reads_back_as_ours() {
        let script = apply_script(&Capture::from_args(&args("*", &[22])).unwrap(), None);
        let saved = tables(&script);
        assert!(!saved[0].rules.is_empty());
        assert!(saved[0].rules.iter().all(|rule| rule.ours), "{script}");
    }

    #[test]
    fn listed_ports_each_jump_to_the_redirect() {
        let capture = Capture::from_args(&args("80, 443,80", &[22])).unwrap();
        assert_eq!(capture.ports, InboundPorts::Listed(vec![80, 443]));
        let rules = rules(&capture);
        assert!(rules.contains(
            &"-A ISTIO_INBOUND -p tcp --dport 80 -m comment --comment peerguard -j ISTIO_IN_REDIRECT".to_owned()
        ));
        assert!(rules.contains(
            &"-A ISTIO_INBOUND -p tcp --dport 443 -m comment --comment peerguard -j ISTIO_IN_REDIRECT".to_owned()
        ));
        assert!(!rules
            .iter()
            .any(|rule| rule.contains("RETURN") || rule.contains("--dport 22")));
    }

    #[test]
    fn a_moved_redirect_port_moves_the_redirect_and_its_exclusion() {
        let mut moved = args("*", &[]);
        moved.redirect_port = 16006;
        let rules = rules(&Capture::from_args(&moved).unwrap());
        assert!(rules
            .contains(&"-A ISTIO_INBOUND -p tcp --dport 16006 -m comment --comment peerguard -j RETURN".to_owned()));
        assert!(rules.contains(
            &"-A ISTIO_IN_REDIRECT -p tcp -m comment --comment peerguard -j REDIRECT --to-ports 16006".to_owned()
        ));
    }

    #[test]
    fn moved_admin_and_health_ports_are_the_ones_excluded() {
        let mut moved = args("*", &[]);
        moved.admin_port = 16000;
        moved.health_port = 16021;
        let rules = rules(&Capture::from_args(&moved).unwrap());
        for port in [16000, 16021] {
            assert!(rules.contains(&format!(
                "-A ISTIO_INBOUND -p tcp --dport {port} -m comment --comment peerguard -j RETURN"
            )));
        }
        assert!(!rules
            .iter()
            .any(|rule| rule.contains("15000") || rule.contains("15021")));
        moved.inbound_ports = "80,16021".into();
        assert_eq!(Capture::from_args(&moved), Err(PortsError::OwnPort(16021)));
    }

    #[test]
    fn bad_ports_are_refused_with_the_offending_text() {
        assert_eq!(Capture::from_args(&args("", &[])), Err(PortsError::Empty));
        assert_eq!(Capture::from_args(&args(" , ", &[])), Err(PortsError::Empty));
        assert_eq!(
            Capture::from_args(&args("80,http", &[])),
            Err(PortsError::NotAPort("http".into()))
        );
        assert_eq!(
            Capture::from_args(&args("70000", &[])),
            Err(PortsError::NotAPort("70000".into()))
        );
        assert_eq!(
            Capture::from_args(&args("0", &[])),
            Err(PortsError::NotAPort("0".into()))
        );
        assert_eq!(
            Capture::from_args(&args("*", &[0])),
            Err(PortsError::NotAPort("0".into()))
        );
        assert_eq!(
            Capture::from_args(&args("80,15021", &[])),
            Err(PortsError::OwnPort(15021))
        );
        assert_eq!(Capture::from_args(&args("15006", &[])), Err(PortsError::OwnPort(15006)));
        assert_eq!(Capture::from_args(&args("15090", &[])), Err(PortsError::OwnPort(15090)));
    }

    #[test]
    fn a_port_both_listed_and_excluded_is_a_contradiction() {
        assert_eq!(
            Capture::from_args(&args("8080", &[8080])),
            Err(PortsError::IncludedAndExcluded(8080))
        );
        assert_eq!(
            Capture::from_args(&args("80,8080", &[22, 8080])),
            Err(PortsError::IncludedAndExcluded(8080))
        );
        // With `*` an exclusion is what narrows the capture; excluding an own port is harmless.
        assert!(Capture::from_args(&args("*", &[8080, 15021])).is_ok());
    }

    #[test]
    fn the_old_inbound_port_spelling_is_refused_naming_both_new_flags() {
        let mut old = args("*", &[]);
        old.renamed_inbound_port = Some("15006".into());
        let message = Capture::from_args(&old).unwrap_err().to_string();
        assert!(message.contains("--redirect-port 15006"), "{message}");
        assert!(message.contains("--inbound-ports"), "{message}");
    }

    #[test]
    fn applying_over_an_existing_capture_keeps_one_prerouting_jump() {
        let capture = Capture::from_args(&args("*", &[])).unwrap();
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_INBOUND - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n\
                     -A PREROUTING -p tcp -m comment --comment peerguard -j ISTIO_INBOUND\nCOMMIT\n";
        let script = apply_script(&capture, nat(&tables(saved)));
        assert!(!script.contains("-A PREROUTING"));
        assert!(script.contains("-F ISTIO_INBOUND\n"));
    }

    #[test]
    fn the_printed_script_is_the_fresh_apply_script_with_a_header() {
        let capture = Capture::from_args(&args("*", &[])).unwrap();
        let printed = print_script(&capture);
        assert!(printed.starts_with("# peerguard inbound capture"));
        assert!(printed.ends_with(&apply_script(&capture, None)));
    }

    #[test]
    fn clean_removes_our_jumps_and_chains_and_nothing_else() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-X - [0:0]\n\
                     :ISTIO_INBOUND - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n\
                     -A PREROUTING -p tcp -j KUBE-X\n\
                     -A PREROUTING -p tcp -m comment --comment peerguard -j ISTIO_INBOUND\n\
                     -A PREROUTING -p tcp -m comment --comment peerguard -j ISTIO_INBOUND\n\
                     -A ISTIO_INBOUND -p tcp -m comment --comment peerguard -j ISTIO_IN_REDIRECT\n\
                     -A ISTIO_IN_REDIRECT -p tcp -m comment --comment peerguard -j REDIRECT --to-ports 15006\n\
                     COMMIT\n";
        assert_eq!(
            clean_script(nat(&tables(saved))).unwrap(),
            "*nat\n-D PREROUTING -p tcp -m comment --comment peerguard -j ISTIO_INBOUND\n\
             -D PREROUTING -p tcp -m comment --comment peerguard -j ISTIO_INBOUND\n\
             -F ISTIO_INBOUND\n-F ISTIO_IN_REDIRECT\n-X ISTIO_INBOUND\n-X ISTIO_IN_REDIRECT\nCOMMIT\n"
        );
    }

    #[test]
    fn cleaning_a_table_without_our_rules_does_nothing() {
        assert_eq!(clean_script(None), None);
        assert_eq!(clean_script(nat(&tables(""))), None);
        // Chains with our names but none of our rules are not known to be ours.
        assert_eq!(
            clean_script(nat(&tables(
                "*nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_INBOUND - [0:0]\n:ISTIO_INBOUNDX - [0:0]\nCOMMIT\n"
            ))),
            None
        );
    }
}
