//! The real `peerguard` binary run as an operator runs a subcommand: its exit status and what
//! it printed, on the seeds' policies.
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::process::{Command, Output};

const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/policies");

/// `peerguard COMMAND ARGS...`, without the POD_NAMESPACE a developer's shell may set.
pub fn peerguard(command: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerguard"))
        .arg(command)
        .args(args)
        .env_remove("POD_NAMESPACE")
        .output()
        .expect("peerguard runs")
}

/// The path of a seed policy file or directory under tests/data/policies.
pub fn policy(name: &str) -> String {
    format!("{POLICIES}/{name}")
}

/// What a successful run printed; a failure fails the test with its stderr.
pub fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}
