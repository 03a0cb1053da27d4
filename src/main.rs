//! The `behalf` binary: parse the command line, set up logging, run the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = behalf::cli::Cli::parse();
    // The demo's transcript is the point; its log (tool stderr included) only on request.
    let default = match cli.command {
        behalf::cli::Command::Demo => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BEHALF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    ExitCode::from(behalf::cli::run(cli))
}
