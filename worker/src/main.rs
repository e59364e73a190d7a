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
    /// Check a tenant before its first run (the onboarding checklist of docs/operations.md):
    /// connect, TLS or host key, login, folders (a probe file written and removed), the file, the
    /// API and its fields, the admin, the mail route, the next ticks. Changes nothing else; exit 0
    /// only if the tenant would run.
    Doctor {
        /// The tenant to check, by its registry name.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        tenant: Option<String>,
        /// Every enabled tenant of the registry.
        #[arg(long)]
        all: bool,
        /// One JSON document on stdout instead of the checklist.
        #[arg(long)]
        json: bool,
        /// Also send the admin a test email (without it, the SMTP dialogue stops before DATA).
        #[arg(long)]
        send_test_email: bool,
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
        Command::Doctor {
            tenant,
            all: _,
            json,
            send_test_email,
        } => runtime.block_on(async move {
            let deps = match worker::Deps::build(settings, registry, secrets) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let opts = worker::doctor::Options { send_test_email };
            let reports = match &tenant {
                Some(name) => vec![worker::doctor::check_tenant(&deps, name, opts).await],
                None => worker::doctor::check_all(&deps, opts).await,
            };
            doctor_output(&reports, tenant.is_some(), json)
        }),
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

/// Prints the doctor's reports; exit 0 only if every tenant would run.
fn doctor_output(reports: &[worker::doctor::TenantReport], one: bool, json: bool) -> ExitCode {
    let would_run = reports.iter().all(|r| r.would_run);
    if json {
        let doc = match (one, reports.first()) {
            (true, Some(report)) => serde_json::to_string(report),
            _ => serde_json::to_string(&worker::doctor::AllReports {
                would_run,
                tenants: reports,
            }),
        };
        match doc {
            Ok(doc) => println!("{doc}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", worker::doctor::render(reports));
        if !one {
            let failing = reports.iter().filter(|r| !r.would_run).count();
            println!("{} tenants checked, {failing} would not run", reports.len());
        }
    }
    if would_run {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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
