//! The scheduler binary: flags, settings, registry, signals, then the library does the work.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};
use scheduler::{PollReport, Scheduler, SchedulerError};
use shared::health::{self, Health, MetricsFn};
use shared::registry::Registry;
use shared::settings::Settings;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "scheduler",
    version,
    about = "Publishes one user-import job per tenant per scheduled tick"
)]
struct Cli {
    /// Settings file (TOML); every setting also has a USER_IMPORT__SECTION__KEY variable.
    #[arg(long, env = "USER_IMPORT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish ticks as they come until SIGTERM/SIGINT (the default); SIGHUP reloads the registry.
    Run,
    /// Publish one round now for every enabled tenant (deduplicated per second); prints JSON.
    Once,
    /// Publish a manual job for one tenant now (allowed for a disabled tenant); prints JSON.
    Trigger {
        #[arg(long)]
        tenant: String,
    },
    /// Print every tenant's next tick and schedule; needs no broker.
    Next,
    /// Load and check the settings and the tenant registry, then exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::startup::run(
        "user-import-scheduler",
        cli.config.as_deref(),
        |settings, _env, runtime| command(cli.command.unwrap_or(Command::Run), settings, runtime),
    )
}

fn command(command: Command, settings: Settings, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let registry = match Registry::load(&settings.registry.file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let options = match scheduler::Options::from_settings(&settings) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::CheckConfig => {
            // The scheduler reads no tenant key; the files the settings name are still checked
            // (the same settings file serves both binaries).
            let problems = shared::settings::preflight::files(&settings);
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("error: {p}");
                }
                return ExitCode::from(2);
            }
            let scheduled = registry
                .tenants()
                .filter(|t| t.enabled && options.serves(&t.region))
                .count();
            println!(
                "settings and registry ok: {} tenants, {scheduled} scheduled by this scheduler",
                registry.len()
            );
            ExitCode::SUCCESS
        }
        Command::Next => {
            print_next(&scheduler::next_ticks(&registry, &options, Utc::now()));
            ExitCode::SUCCESS
        }
        command => match runtime.block_on(async_main(command, settings, registry)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                let permanent = e
                    .downcast_ref::<SchedulerError>()
                    .is_some_and(|e| !e.is_retryable());
                if permanent {
                    ExitCode::from(2)
                } else {
                    ExitCode::FAILURE
                }
            }
        },
    }
}

async fn async_main(
    command: Command,
    settings: Settings,
    registry: Registry,
) -> anyhow::Result<ExitCode> {
    let health = Arc::new(Health::default());
    let scheduler = Scheduler::from_settings(&settings, registry, health.clone())?;
    match command {
        Command::Run => serve(&settings, &scheduler, health).await,
        Command::Once => {
            scheduler
                .connect()
                .await
                .context("connecting to the broker and Redis")?;
            let result = scheduler.once_at(Utc::now()).await;
            scheduler.close().await;
            let report = result?;
            println!("{}", report_json(&report));
            Ok(if report.has_failures() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Trigger { tenant } => {
            let result = scheduler.trigger(&tenant, Utc::now()).await;
            scheduler.close().await;
            let job = result?;
            println!(
                "{}",
                serde_json::json!({
                    "tenant": job.tenant,
                    "region": job.region,
                    "job_id": job.job_id,
                    "message_id": job.message_id(),
                    "scheduled_for": job.scheduled_for,
                    "trigger": job.trigger,
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Next | Command::CheckConfig => Ok(ExitCode::SUCCESS),
    }
}

/// `scheduler run`: health server, signal handlers, the loop; exit 0 on SIGTERM/SIGINT.
async fn serve(
    settings: &Settings,
    scheduler: &Scheduler,
    health: Arc<Health>,
) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let reload = Arc::new(Notify::new());
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    {
        let shutdown = shutdown.clone();
        let reload = reload.clone();
        let health = health.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => reload.notify_one(),
                }
            }
            tracing::info!("stop requested");
            health.set_draining();
            shutdown.cancel();
        });
    }
    let metrics = scheduler.metrics().clone();
    let probe = health.clone();
    let metrics_fn: MetricsFn = Arc::new(move || metrics.render_ready(probe.ready()));
    let addr = health::serve(
        settings.http.listen,
        health.clone(),
        Some(metrics_fn),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("serving health on {}", settings.http.listen))?;
    tracing::info!(%addr, "health, readiness and metrics listening");
    scheduler::run(scheduler, &reload, shutdown.clone()).await?;
    shutdown.cancel();
    Ok(ExitCode::SUCCESS)
}

fn report_json(report: &PollReport) -> serde_json::Value {
    let pairs = |v: &[(shared::TenantName, chrono::DateTime<Utc>)]| {
        v.iter()
            .map(|(t, tick)| serde_json::json!({"tenant": t, "tick": tick}))
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "published": report.jobs.iter().map(|j| serde_json::json!({
            "tenant": j.tenant,
            "tick": j.scheduled_for,
            "job_id": j.job_id,
            "message_id": j.message_id(),
        })).collect::<Vec<_>>(),
        "already_published": pairs(&report.already_published),
        "busy": pairs(&report.busy),
        "failed": report.failed.iter().map(|f| serde_json::json!({
            "tenant": f.tenant,
            "tick": f.tick,
            "error": f.error.to_string(),
        })).collect::<Vec<_>>(),
    })
}

fn print_next(next: &[scheduler::NextTick]) {
    let width = next
        .iter()
        .map(|n| n.tenant.as_str().len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<width$}  {:<6}  {:<25}  schedule",
        "tenant", "region", "next tick (UTC)"
    );
    for n in next {
        let when = n
            .next
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "never".into());
        let mut notes = Vec::new();
        if !n.enabled {
            notes.push("disabled");
        }
        if !n.served {
            notes.push("region not served here");
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" [{}]", notes.join(", "))
        };
        println!(
            "{:<width$}  {:<6}  {:<25}  {} = {}{notes}",
            n.tenant.as_str(),
            n.region,
            when,
            n.schedule,
            n.description
        );
    }
}
