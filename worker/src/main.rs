//! The worker binary: flags, settings, clients, then the library does the work.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shared::registry::Registry;
use shared::registry::secrets::SecretSource;
use shared::settings::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "Runs user imports for the fleet's tenants"
)]
struct Cli {
    /// Settings file (TOML); every setting also has a USER_IMPORT__SECTION__KEY variable.
    #[arg(long, env = "USER_IMPORT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline for one tenant now, without broker or lock; prints one JSON line.
    Once {
        #[arg(long)]
        tenant: String,
    },
    /// Consume the region's queue and run jobs until SIGTERM/SIGINT (then drain and exit 0).
    Run,
    /// Load and check the settings and the tenant registry, then exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::startup::run(
        "user-import-worker",
        cli.config.as_deref(),
        |settings, env, runtime| command(cli.command, settings, env, runtime),
    )
}

fn command(
    command: Command,
    settings: Settings,
    env: &HashMap<String, String>,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    let registry = match Registry::load(&settings.registry.file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let secrets = SecretSource::new(settings.registry.secrets_dir.clone(), env);
    match command {
        Command::CheckConfig => {
            // What start-up or a job would fail on later: named files, the secrets, each key.
            use shared::settings::preflight;
            let mut problems = preflight::files(&settings);
            problems.extend(preflight::tenant_keys(&registry, &secrets));
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("error: {p}");
                }
                return ExitCode::from(2);
            }
            println!("settings and registry ok: {} tenants", registry.len());
            ExitCode::SUCCESS
        }
        Command::Run => runtime.block_on(run(settings, registry, secrets)),
        Command::Once { tenant } => runtime.block_on(async move {
            let deps = match worker::Deps::build(settings, registry, secrets) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let (line, ok) = worker::once::run_once(&deps, &tenant).await;
            println!("{line}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
    }
}

async fn run(settings: Settings, registry: Registry, secrets: SecretSource) -> ExitCode {
    let health = std::sync::Arc::new(shared::health::Health::default());
    // The pod name in Kubernetes; unique per process either way.
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    let worker_id = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let fleet =
        match worker::fleet::FleetDeps::from_settings(&settings, health.clone(), None, worker_id) {
            Ok(f) => std::sync::Arc::new(f),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        };
    let listen = settings.http.listen;
    let deps = match worker::Deps::build(settings, registry, secrets) {
        Ok(d) => std::sync::Arc::new(d),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let http_stop = tokio_util::sync::CancellationToken::new();
    let metrics = deps.metrics.clone();
    let probe = health.clone();
    let metrics_fn: shared::health::MetricsFn =
        std::sync::Arc::new(move || metrics.render_ready(probe.ready()));
    match shared::health::serve(listen, health, Some(metrics_fn), http_stop.clone()).await {
        Ok(addr) => tracing::info!(%addr, "health, readiness and metrics served"),
        Err(e) => {
            eprintln!("error: cannot serve http.listen {listen}: {e}");
            return ExitCode::from(2);
        }
    }
    tokio::spawn(signals(shutdown.clone()));
    tracing::info!(
        worker = fleet.worker_id,
        queue = fleet.topology.queue,
        "worker starting"
    );
    worker::fleet::run(deps, fleet, shutdown).await;
    http_stop.cancel();
    tracing::info!("worker stopped");
    ExitCode::SUCCESS
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal) starts the drain.
async fn signals(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    shutdown.cancel();
}
