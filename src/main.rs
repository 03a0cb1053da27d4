//! The `behalf` binary: parse the command line, set up logging, run the library.

use std::process::ExitCode;

use clap::Parser;

/// The variable that picks the log format; unset or empty means [`LogFormat::Text`].
const LOG_FORMAT_VAR: &str = "BEHALF_LOG_FORMAT";

/// How log lines are written to stderr.
enum LogFormat {
    /// Human-readable lines (with colours on a terminal).
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`, span info), for log
    /// collectors.
    Json,
}

impl LogFormat {
    /// Reads [`LOG_FORMAT_VAR`]; an unknown value is a usage error naming the allowed ones.
    fn from_env() -> Result<Self, String> {
        match std::env::var_os(LOG_FORMAT_VAR) {
            None => Ok(Self::Text),
            Some(v) => match v.to_str() {
                Some("" | "text") => Ok(Self::Text),
                Some("json") => Ok(Self::Json),
                _ => Err(format!(
                    "{LOG_FORMAT_VAR} is {v:?}; expected `text` (the default) or `json`"
                )),
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = behalf::cli::Cli::parse();
    let format = match LogFormat::from_env() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(behalf::cli::exit::USAGE);
        }
    };
    // The demo's transcript is the point; its log (tool stderr included) only on request.
    let default = match cli.command {
        behalf::cli::Command::Demo => "warn",
        _ => "info",
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BEHALF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .with_ansi(false)
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    ExitCode::from(behalf::cli::run(cli))
}
