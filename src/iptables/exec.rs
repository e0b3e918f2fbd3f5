//! Running the real `iptables-save` / `iptables-restore` (or their ip6tables twins), with
//! errors that say what to do: which package to install, which capability is missing.

use std::io::{self, Write};
use std::process::{Command, ExitStatus, Output, Stdio};

/// Which netfilter family a command acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The reader; also the name printed when reporting what it found.
    pub fn save_program(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    /// The loader; also the name printed when reporting what was applied.
    pub fn restore_program(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// A netfilter tool that could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`{program}` not found: install the `iptables` package (e.g. `apt-get install iptables`)")]
    NotInstalled { program: &'static str },
    #[error("`{program}` was not permitted: run as root with the NET_ADMIN and NET_RAW capabilities ({stderr})")]
    PermissionDenied { program: &'static str, stderr: String },
    #[error("`{program}` failed ({status}): {stderr}")]
    Failed {
        program: &'static str,
        status: ExitStatus,
        stderr: String,
    },
    #[error("could not run `{program}`: {source}")]
    Io {
        program: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Every table, as `iptables-save` prints it: Istio's capture may live outside the nat table
/// (TPROXY mode uses mangle), and it must be found wherever it is.
pub fn save(family: Family) -> Result<String, CommandError> {
    let program = family.save_program();
    let output = spawn(program, &[], Stdio::null())
        .and_then(|child| child.wait_with_output())
        .map_err(|source| io_error(program, source))?;
    checked(program, &output)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Load `script` with `iptables-restore --noflush`: one atomic transaction that touches only
/// the chains the script names.
pub fn restore(family: Family, script: &str) -> Result<(), CommandError> {
    let program = family.restore_program();
    let mut child = spawn(program, &["--noflush"], Stdio::piped()).map_err(|source| io_error(program, source))?;
    // Always wait for the child, even when writing failed, so no zombie is left behind and the
    // tool's own complaint (on stderr) is what gets reported.
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(script.as_bytes()),
        None => Err(io::Error::other("stdin was not captured")),
    };
    let output = child.wait_with_output().map_err(|source| io_error(program, source))?;
    checked(program, &output)?;
    written.map_err(|source| io_error(program, source))
}

fn spawn(program: &str, args: &[&str], stdin: Stdio) -> io::Result<std::process::Child> {
    Command::new(program)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

fn io_error(program: &'static str, source: io::Error) -> CommandError {
    if source.kind() == io::ErrorKind::NotFound {
        CommandError::NotInstalled { program }
    } else {
        CommandError::Io { program, source }
    }
}

fn checked(program: &'static str, output: &Output) -> Result<(), CommandError> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if is_permission_denied(&stderr) {
        Err(CommandError::PermissionDenied { program, stderr })
    } else {
        Err(CommandError::Failed {
            program,
            status: output.status,
            stderr,
        })
    }
}

/// How iptables (legacy and nft) word a missing CAP_NET_ADMIN.
fn is_permission_denied(stderr: &str) -> bool {
    ["Permission denied", "Operation not permitted", "you must be root"]
        .iter()
        .any(|phrase| stderr.contains(phrase))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_the_package_to_install() {
        let err = io_error("iptables-save", io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(
            err.to_string(),
            "`iptables-save` not found: install the `iptables` package (e.g. `apt-get install iptables`)"
        );
    }

    #[test]
    fn a_refusal_for_lack_of_privilege_names_the_capability() {
        for stderr in [
            "iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)",
            "iptables-restore v1.8.4 (legacy): iptables-restore: unable to initialize table 'nat': Operation not permitted",
        ] {
            assert!(is_permission_denied(stderr), "{stderr}");
        }
        assert!(!is_permission_denied("iptables-restore: line 3 failed"));
    }
}
