use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_without_a_file() {
    let s = Settings::load(None, &HashMap::new()).map_err(|e| e.to_string());
    let s = s.as_ref().map(|s| (s.import.concurrency, s.smtp.port));
    assert_eq!(s, Ok((8, 587)));
}

#[test]
fn the_file_then_the_environment_decide() -> Result<(), Box<dyn std::error::Error>> {
    let mut f = tempfile::NamedTempFile::new()?;
    writeln!(
        f,
        "[smtp]\nhost = \"mail.example.com\"\nport = 465\ntls = \"tls\"\n[platform]\nrequest_timeout = \"5s\""
    )?;
    let s = Settings::load(
        Some(f.path()),
        &env(&[
            ("USER_IMPORT__SMTP__PORT", "2525"),
            ("USER_IMPORT__SMTP__TLS", "none"),
            ("USER_IMPORT__IMPORT__CONCURRENCY", "3"),
            ("UNRELATED", "x"),
        ]),
    )?;
    assert_eq!(s.smtp.host, "mail.example.com");
    assert_eq!(s.smtp.port, 2525);
    assert_eq!(s.smtp.tls, SmtpTls::None);
    assert_eq!(s.platform.request_timeout, Duration::from_secs(5));
    assert_eq!(s.import.concurrency, 3);
    Ok(())
}

#[test]
fn unknown_keys_are_refused_with_their_name() -> Result<(), Box<dyn std::error::Error>> {
    let mut f = tempfile::NamedTempFile::new()?;
    writeln!(f, "[smtp]\nhots = \"x\"")?;
    let e = Settings::load(Some(f.path()), &HashMap::new())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("hots"), "{e}");
    let e = Settings::load(None, &env(&[("USER_IMPORT__SMTP__PROT", "1")]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("prot"), "{e}");
    Ok(())
}

#[test]
fn nonsense_values_get_clear_errors() {
    for (k, v, needle) in [
        ("USER_IMPORT__IMPORT__CONCURRENCY", "0", "concurrency"),
        (
            "USER_IMPORT__PLATFORM__REQUEST_TIMEOUT",
            "soon",
            "request_timeout",
        ),
        ("USER_IMPORT__SMTP__FROM", "nobody", "smtp.from"),
    ] {
        let e = Settings::load(None, &env(&[(k, v)]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(needle) || e.contains("invalid"), "{k}={v}: {e}");
    }
}

#[test]
fn secrets_in_settings_do_not_print() {
    let s = Settings::load(
        None,
        &env(&[("USER_IMPORT__AMQP__URL", "amqp://u:hunter2@h/%2f")]),
    );
    let text = format!("{s:?}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn the_job_time_limit_must_fit_under_the_brokers_consumer_timeout() {
    let s = Settings::load(None, &HashMap::new()).map_err(|e| e.to_string());
    let s = s
        .as_ref()
        .map(|s| (s.worker.job_timeout, s.amqp.consumer_timeout));
    assert_eq!(
        s,
        Ok((Duration::from_secs(25 * 60), Duration::from_secs(30 * 60))),
        "the defaults fit a default RabbitMQ"
    );
    let too_long = Settings::load(None, &env(&[("USER_IMPORT__WORKER__JOB_TIMEOUT", "50m")]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        too_long.contains("worker.job_timeout") && too_long.contains("amqp.consumer_timeout"),
        "{too_long}"
    );
    let both_raised = Settings::load(
        None,
        &env(&[
            ("USER_IMPORT__WORKER__JOB_TIMEOUT", "50m"),
            ("USER_IMPORT__AMQP__CONSUMER_TIMEOUT", "1h"),
        ]),
    );
    assert!(both_raised.is_ok(), "{:?}", both_raised.err());
}
