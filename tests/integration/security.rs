//! Security points of the pipeline against the real servers: the PASV address a server names is
//! never used, data connections reuse the TLS session as `require_ssl_reuse` servers demand, a
//! job only ever uses its own tenant's credentials, account and API, a disabled tenant's job is
//! dead-lettered, and nothing from the file can add an email header.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use harness::FtpsServer;
use harness::fixtures::HEADER;
use harness::fleet_env::{FleetEnv, FleetOptions, collect_until};
use harness::tenant_env::TenantEnv;

/// A client that does what the server says: `nat_workaround` off, so it dials the PASV address.
async fn naive_client(
    server: &FtpsServer,
    config: Arc<rustls::ClientConfig>,
    nat_workaround: bool,
) -> AsyncRustlsFtpStream {
    let connector = AsyncRustlsConnector::from(suppaftp::tokio_rustls::TlsConnector::from(config));
    let mut ftp = AsyncRustlsFtpStream::connect((server.host.as_str(), server.port))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    ftp.set_mode(Mode::Passive);
    ftp.set_passive_nat_workaround(nat_workaround);
    ftp.into_secure(connector, &server.host)
        .await
        .unwrap_or_else(|e| panic!("tls: {e}"))
}

async fn try_download(ftp: &mut AsyncRustlsFtpStream, path: &str) -> Result<Vec<u8>, FtpError> {
    let mut stream = ftp.retr_as_stream(path).await?;
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .await
        .map_err(FtpError::ConnectionError)?;
    stream.finish().await?;
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pasv_address_the_server_names_is_never_dialled() {
    let server = harness::ftps().await;
    let account = server.create_account();
    account.put("uploads/user-import.csv", b"Username\nada\n");

    // The server names an address nothing listens on: a client that obeys it fails.
    let mut naive = naive_client(server, harness::client_config(&server.ca_file), false).await;
    naive
        .login(&account.user, &account.password)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    naive
        .transfer_type(FileType::Binary)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let obeyed = tokio::time::timeout(
        Duration::from_secs(10),
        try_download(&mut naive, "/uploads/user-import.csv"),
    )
    .await;
    assert!(
        matches!(&obeyed, Ok(Err(FtpError::ConnectionError(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "a client dialling the PASV address {} is refused: {obeyed:?}",
        harness::PASV_ADDRESS
    );

    // The worker's client dials the control connection's peer and gets the file.
    let env = TenantEnv::new().await;
    let registry = env.deps.registry();
    let tenant = registry
        .get(env.tenant())
        .unwrap_or_else(|| panic!("tenant"));
    let mut session = env
        .deps
        .accounts
        .connect(tenant, &shared::ApiKey::new(env.account.password.clone()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    env.upload("Username\nada\n");
    let mut out = Vec::new();
    let size = session
        .download("/uploads/user-import.csv", &mut out, 1 << 20, &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((size, out.as_slice()), (Some(13), &b"Username\nada\n"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_connections_reuse_the_tls_session_as_the_server_requires() {
    let server = harness::ftps().await;
    let account = server.create_account();
    account.put("uploads/user-import.csv", b"Username\nada\n");

    // Without session resumption the server refuses the data connection (require_ssl_reuse).
    let mut no_resume = (*harness::client_config(&server.ca_file)).clone();
    no_resume.resumption = rustls::client::Resumption::disabled();
    let mut ftp = naive_client(server, Arc::new(no_resume), true).await;
    ftp.login(&account.user, &account.password)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ftp.transfer_type(FileType::Binary)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        try_download(&mut ftp, "/uploads/user-import.csv"),
    )
    .await;
    assert!(
        matches!(&refused, Ok(Err(FtpError::UnexpectedResponse(r))) if String::from_utf8_lossy(&r.body).starts_with("522")),
        "the server demands session reuse (522): {refused:?}"
    );

    // The worker's client reuses the session: the whole pipeline's transfers work.
    let env = TenantEnv::new().await;
    env.upload(&format!(
        "{HEADER}\nada,Ada,Lovelace,ada@example.org,Sales,,\n"
    ));
    let counts = env.run_imported().await;
    assert_eq!(counts.created, 1);
    assert!(
        !env.reports().is_empty() && !env.markers().is_empty(),
        "uploads worked too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_uses_only_its_own_tenants_key_account_and_api() {
    let env = FleetEnv::new(FleetOptions {
        tenants: 2,
        ..FleetOptions::default()
    })
    .await;
    for a in &env.accounts {
        a.put(
            "uploads/user-import.csv",
            format!("{HEADER}\nada,Ada,Lovelace,ada@example.org,Sales,,\n").as_bytes(),
        );
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = env.spawn_worker("w1", tx);
    env.publish_job(env.tenant(0), Utc::now()).await;
    collect_until(&mut rx, Duration::from_secs(60), |e| !e.is_empty()).await;
    worker.shutdown().await;
    assert_eq!(env.fake.users(&env.domain(0)).len(), 1, "A was imported");
    assert_eq!(
        env.fake.calls(&env.domain(1)).total(),
        0,
        "B's API identity was never used"
    );
    assert!(env.fake.users(&env.domain(1)).is_empty());
    assert!(
        env.accounts[1].read("log/user-import.log").is_none(),
        "B's account was never written"
    );
    assert!(env.accounts[1].list("tmp").is_empty() && env.accounts[1].list("reports").is_empty());
    assert!(env.accounts[0].read("log/user-import.log").is_some());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_job_for_a_disabled_tenant_is_dead_lettered() {
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        disabled: vec![0],
        ..FleetOptions::default()
    })
    .await;
    env.accounts[0].put(
        "uploads/user-import.csv",
        format!("{HEADER}\nada,Ada,Lovelace,ada@example.org,Sales,,\n").as_bytes(),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = env.spawn_worker("w1", tx);
    env.publish_job(env.tenant(0), Utc::now()).await;
    let events = collect_until(&mut rx, Duration::from_secs(60), |e| !e.is_empty()).await;
    worker.shutdown().await;
    assert_eq!(
        (events[0].disposition, events[0].reason.as_str()),
        ("dead-lettered", "disabled-tenant")
    );
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        shared::amqp::header_str(&dead[0].1, shared::amqp::HEADER_REASON).as_deref(),
        Some("disabled-tenant")
    );
    assert_eq!(env.fake.calls(&env.domain(0)).total(), 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_in_the_file_can_add_an_email_header_or_recipient() {
    let env = TenantEnv::new().await;
    let evil = "\"x\r\nBcc: evil@attacker.example\r\nSubject: pwned\r\n\r\nhi\"";
    env.upload(&format!(
        "{HEADER}\n\
         ada,{evil},Lovelace,ada@example.org,{evil},,\n\
         {evil},Bob,Builder,bob@example.org,Sales,,\n\
         carl,Carl,Sagan,carl@example.org,Sales,,\n"
    ));
    let counts = env.run_imported().await;
    assert_eq!(
        (counts.rows, counts.invalid, counts.created),
        (3, 2, 1),
        "{counts:?}"
    );
    let mails = env.mails(1).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(
        mail.envelope_to,
        vec![env.admin_email.clone()],
        "only the nominated admin"
    );
    assert!(mail.header("Bcc").is_none(), "{:?}", mail.headers);
    assert!(!mail.subject.contains("pwned"), "{}", mail.subject);
    assert_eq!(
        mail.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("subject"))
            .count(),
        1
    );
    let all = harness::smtp().await.all_messages();
    assert!(
        all.iter()
            .all(|m| !m.envelope_to.iter().any(|t| t.contains("attacker"))),
        "no mail went to the attacker"
    );
}
