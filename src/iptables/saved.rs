//! Reading a rule set as `iptables-save` prints it: which rules are ours, and whether Istio's
//! capture (or anything else that is not ours) sits where ours would go.
//!
//! Our chains have Istio's names (`ISTIO_INBOUND`, `ISTIO_IN_REDIRECT`) so that tools and
//! people who know Istio's capture recognise them, so a chain's name cannot say whose it is.
//! Every rule we install therefore carries the comment `peerguard` (`-m comment --comment
//! peerguard`), and the rest follows from it:
//! - a rule in `ISTIO_INBOUND` or `ISTIO_IN_REDIRECT` (nat table) without the comment is
//!   foreign;
//! - a jump to any `ISTIO_*` chain without the comment is foreign (Istio's own
//!   `PREROUTING -p tcp -j ISTIO_INBOUND`, `OUTPUT -j ISTIO_OUTPUT`);
//! - any other `ISTIO_*` chain, in any table, is Istio's: `ISTIO_OUTPUT`, `ISTIO_REDIRECT`
//!   (outbound capture, which peerguard never installs), and in TPROXY mode the mangle table's
//!   `ISTIO_INBOUND`, `ISTIO_DIVERT` and `ISTIO_TPROXY`.
//!
//! An empty `ISTIO_INBOUND` or `ISTIO_IN_REDIRECT` says nothing either way: `--apply` fills it,
//! `--clean` leaves it.

use std::collections::{BTreeMap, BTreeSet};

/// The comment on every rule peerguard installs.
pub const COMMENT: &str = "peerguard";
/// The nat chain PREROUTING jumps to; it decides which ports are captured.
pub const INBOUND_CHAIN: &str = "ISTIO_INBOUND";
/// The nat chain that REDIRECTs a captured connection to peerguard's inbound port.
pub const REDIRECT_CHAIN: &str = "ISTIO_IN_REDIRECT";
/// Istio's chain names all start with this.
const ISTIO_PREFIX: &str = "ISTIO_";

/// One table of a saved rule set.
#[derive(Debug, Default)]
pub struct Table<'a> {
    pub name: &'a str,
    /// Every chain declared (`:NAME POLICY [counters]`), built-in ones included.
    pub chains: Vec<&'a str>,
    pub rules: Vec<Rule<'a>>,
}

/// One `-A CHAIN ...` line.
#[derive(Debug)]
pub struct Rule<'a> {
    /// The whole line, as saved: `-A PREROUTING -p tcp -m comment --comment peerguard -j ...`.
    pub line: &'a str,
    pub chain: &'a str,
    /// What `-j` names, if anything.
    pub target: Option<&'a str>,
    /// Whether it carries our comment.
    pub ours: bool,
}

impl Table<'_> {
    pub fn has_chain(&self, chain: &str) -> bool {
        self.chains.contains(&chain)
    }

    fn is_our_chain(&self, chain: &str) -> bool {
        self.name == "nat" && (chain == INBOUND_CHAIN || chain == REDIRECT_CHAIN)
    }
}

/// The tables of `iptables-save` output (comments and counters ignored).
pub fn tables(saved: &str) -> Vec<Table<'_>> {
    let mut tables: Vec<Table<'_>> = Vec::new();
    for line in saved.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            tables.push(Table {
                name: name.trim(),
                ..Table::default()
            });
            continue;
        }
        let Some(table) = tables.last_mut() else { continue };
        if let Some(declaration) = line.strip_prefix(':') {
            if let Some(chain) = declaration.split_whitespace().next() {
                table.chains.push(chain);
            }
        } else if let Some(rule) = parse_rule(line) {
            table.rules.push(rule);
        }
    }
    tables
}

fn parse_rule(line: &str) -> Option<Rule<'_>> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let (&"-A", &chain) = (tokens.first()?, tokens.get(1)?) else {
        return None;
    };
    let target = tokens
        .windows(2)
        .find(|pair| pair[0] == "-j" || pair[0] == "--jump")
        .map(|pair| pair[1]);
    let ours = tokens
        .windows(2)
        .any(|pair| pair[0] == "--comment" && pair[1].trim_matches('"') == COMMENT);
    Some(Rule {
        line,
        chain,
        target,
        ours,
    })
}

/// The nat table, if the save has one.
pub fn nat<'t, 'a>(tables: &'t [Table<'a>]) -> Option<&'t Table<'a>> {
    tables.iter().find(|table| table.name == "nat")
}

/// What in the rule set peerguard did not install but would collide with: chain names by table
/// (see the module comment). Empty when the tables hold nothing of Istio's.
pub fn foreign_chains<'a>(tables: &[Table<'a>]) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    let mut foreign: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for table in tables {
        let mut names = BTreeSet::new();
        for &chain in &table.chains {
            if chain.starts_with(ISTIO_PREFIX) && !table.is_our_chain(chain) {
                names.insert(chain);
            }
        }
        for rule in table.rules.iter().filter(|rule| !rule.ours) {
            if table.is_our_chain(rule.chain) {
                names.insert(rule.chain);
            }
            if let Some(target) = rule.target.filter(|target| target.starts_with(ISTIO_PREFIX)) {
                names.insert(target);
            }
        }
        if !names.is_empty() {
            foreign.insert(table.name, names);
        }
    }
    foreign
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nat table after istio-init's `istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT
    /// -i '*' -b '*' -d 15090,15021,15020`, as iptables-save prints it (from istio's
    /// `inbound-ports-wildcard.golden`).
    const ISTIO_INIT: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

    fn foreign(saved: &str) -> Vec<(String, Vec<String>)> {
        foreign_chains(&tables(saved))
            .into_iter()
            .map(|(table, chains)| (table.to_owned(), chains.into_iter().map(str::to_owned).collect()))
            .collect()
    }

    #[test]
    fn istio_inits_capture_is_foreign_chain_by_chain() {
        assert_eq!(
            foreign(ISTIO_INIT),
            [(
                "nat".to_owned(),
                vec![
                    "ISTIO_INBOUND".to_owned(),
                    "ISTIO_IN_REDIRECT".to_owned(),
                    "ISTIO_OUTPUT".to_owned(),
                    "ISTIO_REDIRECT".to_owned()
                ]
            )]
        );
    }

    #[test]
    fn our_commented_rules_are_not_foreign() {
        let ours = "*nat
:PREROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
-A PREROUTING -p tcp -m comment --comment peerguard -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -m comment --comment \"peerguard\" -j RETURN
-A ISTIO_IN_REDIRECT -p tcp -m comment --comment peerguard -j REDIRECT --to-ports 15006
COMMIT
";
        assert!(foreign(ours).is_empty());
        let nat = tables(ours);
        assert!(nat[0].rules.iter().all(|rule| rule.ours));
        assert_eq!(nat[0].rules[0].target, Some("ISTIO_INBOUND"));
    }

    #[test]
    fn an_uncommented_rule_in_our_chain_makes_it_foreign() {
        let mixed = "*nat
:ISTIO_INBOUND - [0:0]
-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A ISTIO_INBOUND -p tcp -m comment --comment peerguard -j ISTIO_IN_REDIRECT
COMMIT
";
        assert_eq!(foreign(mixed), [("nat".to_owned(), vec!["ISTIO_INBOUND".to_owned()])]);
    }

    #[test]
    fn istios_tproxy_chains_in_the_mangle_table_are_foreign() {
        let tproxy = "*mangle
:PREROUTING ACCEPT [0:0]
:ISTIO_DIVERT - [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_TPROXY - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
COMMIT
";
        assert_eq!(
            foreign(tproxy),
            [(
                "mangle".to_owned(),
                vec![
                    "ISTIO_DIVERT".to_owned(),
                    "ISTIO_INBOUND".to_owned(),
                    "ISTIO_TPROXY".to_owned()
                ]
            )]
        );
    }

    #[test]
    fn empty_chains_with_our_names_and_other_peoples_chains_are_not_foreign() {
        let saved = "*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:ISTIO_INBOUND - [0:0]
-A PREROUTING -j KUBE-SERVICES
COMMIT
";
        assert!(foreign(saved).is_empty());
    }
}
