//! `peerguard iptables`: istio-iptables-compatible inbound capture for the transparent
//! listener. Prints an `iptables-restore` script by default; `--apply` loads it idempotently
//! and `--clean` removes exactly what it added, both through `iptables-save` /
//! `iptables-restore --noflush` (and the ip6tables twins with `--ipv6`).
//!
//! There is no `--proxy-uid`: istio-iptables needs it only for outbound capture
//! (`ISTIO_OUTPUT`), which peerguard does not install (see `rules`).

mod exec;
mod rules;

use anyhow::Context;

use exec::Family;
use rules::{apply_script, clean_script, print_script, Capture};

use crate::cli::IptablesArgs;

/// Run the `iptables` subcommand.
pub fn run(args: &IptablesArgs) -> anyhow::Result<()> {
    let families: &[Family] = if args.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    if args.clean {
        for &family in families {
            clean(family)?;
        }
        return Ok(());
    }
    let capture = Capture::from_args(args).context("invalid port arguments")?;
    if !args.apply {
        print!("{}", print_script(&capture));
        return Ok(());
    }
    for &family in families {
        let current = exec::save_nat(family)?;
        exec::restore(family, &apply_script(&capture, &current))?;
        println!("peerguard: inbound capture applied ({})", family.restore_program());
    }
    Ok(())
}

fn clean(family: Family) -> anyhow::Result<()> {
    let current = exec::save_nat(family)?;
    match clean_script(&current) {
        Some(script) => {
            exec::restore(family, &script)?;
            println!("peerguard: inbound capture removed ({})", family.restore_program());
        }
        None => println!("peerguard: no inbound capture to remove ({})", family.restore_program()),
    }
    Ok(())
}
