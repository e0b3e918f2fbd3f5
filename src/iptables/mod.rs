//! `peerguard iptables`: istio-iptables-compatible inbound capture for the transparent
//! listener. Prints an `iptables-restore` script by default; `--apply` loads it idempotently
//! and `--clean` removes exactly what it added, both through `iptables-save` /
//! `iptables-restore --noflush` (and the ip6tables twins with `--ipv6`).
//!
//! Both refuse, and change nothing in any family, when the tables already hold Istio's capture
//! (istio-init or the istio-cni plugin ran for this pod): see `saved` for how our rules are
//! told from Istio's.
//!
//! There is no `--proxy-uid`: istio-iptables needs it only for outbound capture
//! (`ISTIO_OUTPUT`), which peerguard does not install (see `rules`).

mod exec;
mod rules;
mod saved;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;

use exec::Family;
use rules::{apply_script, clean_script, print_script, Capture};

use crate::cli::IptablesArgs;

/// Istio's capture, found where ours would go.
#[derive(Debug, thiserror::Error)]
#[error(
    "{program}: this pod already holds Istio's traffic capture ({found}), which peerguard did not \
     install; {nothing_done}. istio-init or the istio-cni plugin ran for this pod: opt it out of \
     Istio's sidecar injection with the pod annotation `sidecar.istio.io/inject: \"false\"` and \
     recreate it (or let Istio's own sidecar handle it)"
)]
pub struct IstioCaptureFound {
    program: &'static str,
    /// `ISTIO_INBOUND, ISTIO_OUTPUT (nat table)`, table by table.
    found: String,
    nothing_done: &'static str,
}

/// Run the `iptables` subcommand.
pub fn run(args: &IptablesArgs) -> anyhow::Result<()> {
    let families: &[Family] = if args.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    if args.clean {
        let nothing_done = "nothing was removed: --clean removes only rules that carry peerguard's comment";
        for (family, saved) in inspect(families, nothing_done)? {
            clean(family, &saved)?;
        }
        return Ok(());
    }
    let capture = Capture::from_args(args).context("invalid port arguments")?;
    if !args.apply {
        print!("{}", print_script(&capture));
        return Ok(());
    }
    let nothing_done = "nothing was changed: peerguard does not rewrite another proxy's capture";
    for (family, saved) in inspect(families, nothing_done)? {
        let tables = saved::tables(&saved);
        exec::restore(family, &apply_script(&capture, saved::nat(&tables)))?;
        println!("peerguard: inbound capture applied ({})", family.restore_program());
    }
    Ok(())
}

/// Every family's saved rule set, or the first family's Istio capture as an error: all are
/// checked before any is changed, so a refusal leaves every family as it was.
fn inspect(families: &[Family], nothing_done: &'static str) -> anyhow::Result<Vec<(Family, String)>> {
    let mut saved = Vec::new();
    for &family in families {
        let text = exec::save(family)?;
        let foreign = saved::foreign_chains(&saved::tables(&text));
        if !foreign.is_empty() {
            return Err(IstioCaptureFound {
                program: family.save_program(),
                found: describe(&foreign),
                nothing_done,
            }
            .into());
        }
        saved.push((family, text));
    }
    Ok(saved)
}

fn describe(foreign: &BTreeMap<&str, BTreeSet<&str>>) -> String {
    foreign
        .iter()
        .map(|(table, chains)| {
            let chains: Vec<&str> = chains.iter().copied().collect();
            format!("{} ({table} table)", chains.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn clean(family: Family, saved: &str) -> anyhow::Result<()> {
    let tables = saved::tables(saved);
    match clean_script(saved::nat(&tables)) {
        Some(script) => {
            exec::restore(family, &script)?;
            println!("peerguard: inbound capture removed ({})", family.restore_program());
        }
        None => println!("peerguard: no inbound capture to remove ({})", family.restore_program()),
    }
    Ok(())
}
