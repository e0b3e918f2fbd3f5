use clap::Parser;
use peerguard::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Certs(args) => peerguard::certs::run(args),
        _ => Ok(()),
    };
    if let Err(error) = result {
        eprintln!("peerguard: {error:#}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
