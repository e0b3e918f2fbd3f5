//! The `peerguard` binary: parse the command line, start tracing, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use peerguard::cli::{Cli, Command, LogFormat};

/// Exit code for an invalid policy or command line, as `check` uses it too (and clap for
/// arguments it cannot parse).
const EXIT_INVALID_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_tracing(args.log_format);
            run(&args)
        }
        Command::Check(args) => peerguard::check::run(&args),
        Command::TlsCheck(args) => peerguard::tls_check::run(&args),
        Command::Audit(args) => report(peerguard::audit::run(&args)),
        Command::Demo(args) => {
            init_tracing(LogFormat::Text);
            report(peerguard::demo::run(&args))
        }
        Command::Certs(args) => report(peerguard::certs::run(&args)),
        Command::DevCa(args) => {
            init_tracing(LogFormat::Text);
            report(peerguard::dev_ca::run(&args))
        }
        Command::Iptables(args) => report(peerguard::iptables::run(&args)),
    }
}

fn run(args: &peerguard::cli::RunArgs) -> ExitCode {
    let config = match peerguard::config::Config::from_args(args) {
        Ok(config) => config,
        // A command line that cannot make a proxy is a usage error, as clap's own are and as
        // `check` reports an invalid --labels.
        Err(e) => return fail_with(&e, EXIT_INVALID_INPUT),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    match runtime.block_on(peerguard::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ peerguard::app::StartError::Policy(_)) => fail_with(&e, EXIT_INVALID_INPUT),
        Err(e) => fail(&e),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerguard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    fail_with(error, 1)
}

fn fail_with(error: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("peerguard: {error}");
    ExitCode::from(code)
}

fn init_tracing(format: LogFormat) {
    // The kube client and watcher log every failed request of a retry loop themselves;
    // peerguard's Kubernetes source logs each distinct failure once, with the resource and what
    // to do about it (docs/kubernetes.md#logs), so theirs are off unless PEERGUARD_LOG asks.
    let filter = tracing_subscriber::EnvFilter::try_from_env("PEERGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off,kube_runtime=off"));
    // Colour only for a person at a terminal; log collectors and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
