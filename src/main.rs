use clap::Parser;
use peerguard::cli::Command;

fn main() -> std::process::ExitCode {
    let cli = peerguard::cli::Cli::parse();
    match cli.command {
        Command::Check(args) => peerguard::check::run(&args),
        Command::Iptables(args) => match peerguard::iptables::run(&args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("peerguard: {err:#}");
                std::process::ExitCode::FAILURE
            }
        },
        _ => std::process::ExitCode::SUCCESS,
    }
}
