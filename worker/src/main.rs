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
    /// Load and check the settings and the tenant registry, then exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let settings = match Settings::load(cli.config.as_deref(), &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    shared::telemetry::init_logging(settings.log_format);
    let registry = match Registry::load(&settings.registry.file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let secrets = SecretSource::new(settings.registry.secrets_dir.clone(), &env);
    match cli.command {
        Command::CheckConfig => {
            println!("settings and registry ok: {} tenants", registry.len());
            ExitCode::SUCCESS
        }
        Command::Once { tenant } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async move {
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
            })
        }
    }
}
