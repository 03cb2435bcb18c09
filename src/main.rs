use std::process::ExitCode;

use deis_builder::cli::{Cli, Command, PullArgs, PurgeCacheArgs};
use deis_builder::config::{LogFormat, Settings};

fn main() -> ExitCode {
    return_big_buffers_to_the_kernel();
    let cli = Cli::parse_with_sources();
    let outcome = match cli.command {
        Command::Hook => {
            return ExitCode::from(u8::try_from(deis_frontdoor::git::hook::run_hook()).unwrap_or(1))
        }
        Command::Pull(args) => {
            let PullArgs { import, serve } = *args;
            settings(serve, false)
                .and_then(|settings| run(deis_builder::server::pull(settings, import)).map(drop))
        }
        Command::PurgeCache(args) => {
            let PurgeCacheArgs { app, serve } = *args;
            settings(serve, false).and_then(|settings| run(purge_cache(settings, app)))
        }
        Command::Serve(args) => {
            settings(*args, true).and_then(|settings| run(deis_builder::server::run(settings)))
        }
    };
    outcome.err().unwrap_or(ExitCode::SUCCESS)
}

/// glibc raises its mmap threshold each time a big buffer (an S3 part, a gzip block) is
/// freed, so later ones come from arena heaps that keep their freed pages resident: a 1 GB
/// push peaked 25 MB higher that way. A fixed threshold (which also fixes the trim
/// threshold) maps every buffer of 1 MiB or more on its own and unmaps it when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_big_buffers_to_the_kernel() {
    use std::os::raw::c_int;
    const M_MMAP_THRESHOLD: c_int = -3;
    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // SAFETY: mallopt only tunes the allocator; called first thing, before other threads.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_big_buffers_to_the_kernel() {}

/// Validated settings with logging set up, or the exit code for a bad setting (2).
/// `server_logs` picks the configured log format; one-shot commands log for humans.
fn settings(args: deis_builder::cli::ServeArgs, server_logs: bool) -> Result<Settings, ExitCode> {
    let settings = Settings::from_args(args).map_err(|error| {
        eprintln!("deis-builder: {error}");
        ExitCode::from(2)
    })?;
    init_tracing(
        if server_logs {
            settings.log_format
        } else {
            LogFormat::Human
        },
        settings.debug,
    );
    if server_logs {
        settings.log_effective();
    }
    Ok(settings)
}

/// `deis-builder purge-cache APP`: deletes the app's build cache objects.
async fn purge_cache(settings: Settings, app: String) -> anyhow::Result<()> {
    let app = deis_types::names::AppName::parse(&app)?;
    // Opening a local store creates it: a mistyped data dir must not get one.
    if let deis_builder::config::StorageSettings::Local(dir) = &settings.storage {
        if !dir.is_dir() {
            println!(
                "No build cache for {app}: there is no local storage at {}.",
                dir.display()
            );
            return Ok(());
        }
    }
    let store = deis_builder::server::store(&settings).await?;
    if deis_pipeline::cache::purge(store.as_ref(), &app).await? {
        println!("Build cache of {app} purged ({}).", store.describe());
    } else {
        println!("No build cache for {app} ({}).", store.describe());
    }
    Ok(())
}

/// Runs `job` on a fresh runtime; errors are reported here, at the edge, with their context.
fn run<T>(job: impl std::future::Future<Output = anyhow::Result<T>>) -> Result<T, ExitCode> {
    let runtime = tokio::runtime::Runtime::new().map_err(|error| {
        eprintln!("deis-builder: cannot start the async runtime: {error}");
        ExitCode::FAILURE
    })?;
    runtime.block_on(job).map_err(|error| {
        eprintln!("deis-builder: {error:#}");
        ExitCode::FAILURE
    })
}

fn init_tracing(format: LogFormat, debug: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    // Events of dependencies that would print credentials are dropped at any level.
    let credentials_safe = tracing_subscriber::filter::filter_fn(|metadata| {
        deis_builder::config::log_event_allowed(metadata)
    });
    let default = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // One object a line, with the current span's fields and the list of enclosing spans.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .finish()
            .with(credentials_safe)
            .init(),
        // Colours only for a terminal: escape codes in a log file are noise.
        LogFormat::Human => {
            use std::io::IsTerminal;
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .finish()
                .with(credentials_safe)
                .init()
        }
    }
}
