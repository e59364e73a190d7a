//! The loop of `scheduler run`: poll at start (catch-up) and then every min(time to the earliest
//! next tick, `max_poll_interval`); keep the broker connection up (reconnecting with backoff,
//! every attempt logged); retry a poll that failed with backoff; reload the registry when its
//! file changes (checked every `reload_interval`) or when `reload` is notified (SIGHUP in the
//! binary); stop when `shutdown` fires, closing the connection.

use std::time::Duration;

use chrono::Utc;
use shared::registry::RegistryError;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::SchedulerError;
use crate::report::PollReport;
use crate::scheduler::Scheduler;

/// Runs until `shutdown`; returns `Ok` after a clean stop.
pub async fn run(
    scheduler: &Scheduler,
    reload: &Notify,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    let options = scheduler.options();
    tracing::info!(
        exchange = %options.exchange,
        regions = ?scheduler.publisher().regions(),
        catch_up_window = ?options.catch_up_window,
        tenants = scheduler.registry().len(),
        "scheduler starting"
    );
    let mut retry = Backoff::new(Duration::from_secs(1), options.max_poll_interval);
    let mut next_reload_check = Instant::now() + options.reload_interval;
    // Readiness reflects Redis from the start, even while the broker is still being reached.
    if let Err(e) = scheduler.ledger().ping().await {
        tracing::warn!(error = %e, "redis is unreachable");
    }
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if !scheduler.publisher().is_connected().await {
            match scheduler.publisher().connect_with_backoff(&shutdown).await {
                Ok(()) => {}
                Err(SchedulerError::Cancelled) => break,
                Err(e) => return Err(e),
            }
        }
        if let Err(e) = scheduler.ledger().ping().await {
            tracing::warn!(error = %e, "redis is unreachable");
        }
        let delay = match scheduler.poll_at(Utc::now()).await {
            Ok(report) => {
                log_report(&report);
                let next = scheduler.poll_delay(Utc::now());
                if report.has_failures() {
                    retry.next_delay().min(next)
                } else {
                    retry.reset();
                    next
                }
            }
            Err(e) => {
                let delay = retry.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "poll failed");
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = reload.notified() => {
                tracing::info!("reload requested");
                log_reload(scheduler.reload_registry().await);
            }
            _ = tokio::time::sleep_until(next_reload_check) => {
                next_reload_check = Instant::now() + options.reload_interval;
                if let Some(result) = scheduler.reload_if_changed().await {
                    log_reload(result);
                }
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tracing::info!("scheduler stopping");
    scheduler.close().await;
    Ok(())
}

fn log_report(report: &PollReport) {
    for f in &report.failed {
        tracing::warn!(
            tenant = %f.tenant,
            tick = ?f.tick.map(|t| t.to_rfc3339()),
            retryable = f.error.is_retryable(),
            error = %f.error,
            "tick not published"
        );
    }
    if !report.published.is_empty() || !report.busy.is_empty() || !report.failed.is_empty() {
        tracing::info!(
            published = report.published.len(),
            busy = report.busy.len(),
            already_published = report.already_published.len(),
            failed = report.failed.len(),
            "poll"
        );
    }
}

fn log_reload(result: Result<usize, RegistryError>) {
    match result {
        Ok(tenants) => tracing::info!(tenants, "tenant registry reloaded"),
        Err(e) => tracing::error!(
            file = %e.file.display(),
            tenant = e.tenant.as_deref().unwrap_or("-"),
            field = e.field.as_deref().unwrap_or("-"),
            error = %e,
            "tenant registry did not reload; keeping the previous one"
        ),
    }
}
