//! The `sophia` binary: a thin shell over the library.

use std::process::ExitCode;

use sophia::cli::{self, Command};
use sophia::config::Settings;
use sophia::startup::{Application, shutdown_signal};

/// mimalloc: the request path allocates many small, short-lived buffers; glibc's malloc spent
/// about a quarter of the hot path's CPU on them (BENCHMARKS.md, "The floor").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(clippy::print_stdout)]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The sandboxed text extractor (spawned by refresh jobs): before any configuration or
    // runtime, so it starts small and limits itself at once.
    if args.first().map(String::as_str) == Some("extract-text") {
        let code = sophia::knowledge::sandbox::child_main(&args[1..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let command = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sophia: {e}\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sophia: {e}");
            return ExitCode::from(78);
        }
    };
    match command {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("sophia {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::AdminToken {
            role,
            company,
            ttl_secs,
        } => match cli::admin_token(&settings, &role, company.as_ref(), ttl_secs) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sophia: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => serve(settings),
        Command::Simulator { port, config } => simulate(port, config),
    }
}

fn serve(settings: Settings) -> ExitCode {
    sophia::telemetry::init(&settings);
    let flush = settings.telemetry.flush_timeout;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sophia: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = ?e, "start-up failed: {e:#}");
                eprintln!("sophia: start-up failed: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            http.port = app.port(),
            "sophia {} listening on port {}",
            env!("CARGO_PKG_VERSION"),
            app.port()
        );
        match app.run_until_stopped(shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = ?e, "server error: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // What the host's stop left pending goes out, within a bound.
    if !sophia::telemetry::shutdown(flush) {
        eprintln!(
            "sophia: pending telemetry not flushed within {} ms",
            flush.as_millis()
        );
    }
    code
}

fn simulate(port: u16, config: sophia::dev::simulator::SimConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sophia: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sophia simulator: cannot bind 127.0.0.1:{port}: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("sophia simulator listening on http://127.0.0.1:{port}");
        let sim = sophia::dev::simulator::Simulator::new(config);
        match sophia::dev::simulator::serve(listener, sim, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sophia simulator: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
