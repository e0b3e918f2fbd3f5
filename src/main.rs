use clap::Parser;
use peerguard::cli::Command;

fn main() -> std::process::ExitCode {
    let cli = peerguard::cli::Cli::parse();
    let result = match cli.command {
        Command::Check(args) => return peerguard::check::run(&args),
        Command::Iptables(args) => peerguard::iptables::run(&args),
        Command::Certs(args) => peerguard::certs::run(&args),
        _ => Ok(()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("peerguard: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
