//! What both binaries do before their command runs and after it ends: the settings (file and
//! environment), the Tokio runtime, logs and traces ([`crate::telemetry`]); then the command; then
//! the spans still buffered are flushed.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use tokio::runtime::Runtime;

use crate::settings::Settings;

/// Runs `command` with the loaded settings, the process environment and a started runtime, for the
/// binary whose traces are named `service`. A bad configuration exits 2 with its error on stderr.
pub fn run(
    service: &str,
    config: Option<&Path>,
    command: impl FnOnce(Settings, &HashMap<String, String>, &Runtime) -> ExitCode,
) -> ExitCode {
    let env: HashMap<String, String> = std::env::vars().collect();
    let settings = match Settings::load(config, &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's gRPC channel is spawned on the runtime.
    let telemetry = {
        let _in_runtime = runtime.enter();
        match crate::telemetry::init(service, settings.log_format, &env) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let code = command(settings, &env, &runtime);
    // Flushes the spans still buffered (a `once` round or the last jobs end before the next batch).
    telemetry.shutdown();
    code
}
