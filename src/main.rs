use std::process::ExitCode;

use clap::Parser;
use deis_builder::cli::{Cli, Command, PullArgs};
use deis_builder::config::{LogFormat, Settings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Hook => {
            ExitCode::from(u8::try_from(deis_builder::git::hook::run_hook()).unwrap_or(1))
        }
        Command::Pull(args) => {
            let PullArgs { import, serve } = *args;
            let settings = match Settings::from_args(serve) {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("deis-builder: {error}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(LogFormat::Human);
            run(deis_builder::server::pull(settings, import))
                .map_or(ExitCode::FAILURE, |_| ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            let settings = match Settings::from_args(*args) {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("deis-builder: {error}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(settings.log_format);
            run(deis_builder::server::run(settings))
                .map_or(ExitCode::FAILURE, |()| ExitCode::SUCCESS)
        }
    }
}

/// Runs `job` on a fresh runtime; errors are reported here, at the edge, with their context.
fn run<T>(job: impl std::future::Future<Output = anyhow::Result<T>>) -> Result<T, ()> {
    let runtime = tokio::runtime::Runtime::new().map_err(|error| {
        eprintln!("deis-builder: cannot start the async runtime: {error}");
    })?;
    runtime.block_on(job).map_err(|error| {
        eprintln!("deis-builder: {error:#}");
    })
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let default = if std::env::var_os("DEIS_DEBUG").is_some() {
        "debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}
