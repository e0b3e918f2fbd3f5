use clap::Parser;
use peerguard::cli::Command;

fn main() -> std::process::ExitCode {
    let cli = peerguard::cli::Cli::parse();
    match cli.command {
        Command::Check(args) => peerguard::check::run(&args),
        _ => std::process::ExitCode::SUCCESS,
    }
}
