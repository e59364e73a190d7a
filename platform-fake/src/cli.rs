//! The binary's command line: where to listen, which tenants to create, which faults to inject.
//! Parsing lives here (not in `main.rs`) so that it can be tested.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

use crate::config::{FakeConfig, TenantSeed};
use crate::faults::Faults;

/// A fake of the tenant platform's public user API, with fault injection. For tests,
/// benchmarks and local demos only; it is never part of the production image.
#[derive(Parser)]
#[command(name = "platform-fake", version)]
pub struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "PLATFORM_FAKE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// A tenant as DOMAIN=KEY (portal domain and API key); repeatable.
    #[arg(
        long = "tenant",
        value_name = "DOMAIN=KEY",
        env = "PLATFORM_FAKE_TENANTS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub tenants: Vec<String>,

    /// A file of tenants, one DOMAIN=KEY per line (blank lines and `#` comments skipped).
    #[arg(long, value_name = "FILE", env = "PLATFORM_FAKE_TENANTS_FILE")]
    pub tenants_file: Option<PathBuf>,

    /// Milliseconds added to every API call.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,

    /// Share (0.0..=1.0) of API calls answered 500/502/503.
    #[arg(long, default_value_t = 0.0)]
    pub error_5xx_rate: f64,

    /// Share (0.0..=1.0) of API calls answered 429.
    #[arg(long, default_value_t = 0.0)]
    pub rate_429: f64,

    /// The Retry-After value of injected 429s, in seconds.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,

    /// Milliseconds a SetUser/SetUsers tid stays pending.
    #[arg(long, default_value_t = 0)]
    pub status_delay_ms: u64,

    /// Share (0.0..=1.0) of API calls that hang for 300 s before being answered.
    #[arg(long, default_value_t = 0.0)]
    pub timeout_rate: f64,

    /// Share (0.0..=1.0) of API calls whose connection is closed without an answer.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,

    /// Log JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

// By hand: the derived one would print the tenants' API keys.
impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("listen", &self.listen)
            .field(
                "tenants",
                &format_args!("[{} redacted]", self.tenants.len()),
            )
            .field("tenants_file", &self.tenants_file)
            .field("faults", &self.faults())
            .field("log_json", &self.log_json)
            .finish()
    }
}

impl Cli {
    fn faults(&self) -> Faults {
        Faults {
            latency_ms: self.latency_ms,
            error_5xx_rate: self.error_5xx_rate,
            rate_429: self.rate_429,
            retry_after_secs: self.retry_after_secs,
            status_delay_ms: self.status_delay_ms,
            timeout_rate: self.timeout_rate,
            drop_rate: self.drop_rate,
            ..Faults::default()
        }
    }

    /// The fake's configuration: tenants from the flags then the file, and the faults.
    pub fn config(&self) -> anyhow::Result<FakeConfig> {
        let mut tenants = Vec::new();
        for (i, raw) in self.tenants.iter().enumerate() {
            let seed = TenantSeed::parse(raw)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--tenant number {}", i + 1))?;
            tenants.push(seed);
        }
        if let Some(path) = &self.tenants_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the tenants file {}", path.display()))?;
            tenants.extend(
                parse_tenants_file(&text)
                    .with_context(|| format!("parsing the tenants file {}", path.display()))?,
            );
        }
        let faults = self.faults();
        if let Err(message) = faults.validate() {
            bail!("invalid faults: {message}");
        }
        Ok(FakeConfig { tenants, faults })
    }
}

/// Lines `DOMAIN=KEY`; blank lines and lines starting with `#` are skipped. Errors name the line
/// number, never its content.
pub fn parse_tenants_file(text: &str) -> anyhow::Result<Vec<TenantSeed>> {
    let mut tenants = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let seed = TenantSeed::parse(line)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("line {}", i + 1))?;
        tenants.push(seed);
    }
    Ok(tenants)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_tenants_and_faults() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from([
            "platform-fake",
            "--listen",
            "127.0.0.1:0",
            "--tenant",
            "acme.learning-admin.com=k1",
            "--tenant",
            "globex.learning-admin.com=k2",
            "--rate-429",
            "0.25",
            "--latency-ms",
            "5",
        ])?;
        let config = cli.config()?;
        assert_eq!(config.tenants.len(), 2);
        assert_eq!(config.tenants[1].api_key, "k2");
        assert_eq!(config.faults.rate_429, 0.25);
        assert_eq!(config.faults.latency_ms, 5);
        assert_eq!(config.faults.retry_after_secs, 1);
        let shown = format!("{cli:?}");
        assert!(!shown.contains("k1") && !shown.contains("k2"), "{shown}");
        Ok(())
    }

    #[test]
    fn a_rate_above_one_is_refused() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["platform-fake", "--drop-rate", "2"])?;
        assert!(cli.config().is_err());
        Ok(())
    }

    #[test]
    fn a_tenants_file_skips_comments_and_names_the_bad_line() {
        let good =
            parse_tenants_file("# tenants\n\nacme.learning-admin.com=k1\n b.example.com = k2 \n");
        assert_eq!(good.map(|t| t.len()).ok(), Some(2));
        let bad = parse_tenants_file("acme.learning-admin.com=k1\nsecretwithoutdomain\n");
        let message = format!("{:#}", bad.err().map(|e| e.to_string()).unwrap_or_default());
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("secretwithoutdomain"));
    }
}
