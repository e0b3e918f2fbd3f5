use clap::Parser;

fn main() -> std::process::ExitCode {
    let _cli = peerguard::cli::Cli::parse();
    std::process::ExitCode::SUCCESS
}
