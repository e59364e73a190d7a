//! Proofs that every external service the fleet talks to is real and behaves as the code will
//! rely on: RabbitMQ (publisher confirms, manual acks), Redis (`SET NX PX` locks that expire),
//! vsftpd (explicit FTPS with a verified certificate, an unknown CA refused, TLS mandatory) and
//! the SMTP sink (a sent message read back, attachment included).
//!
//! Each test isolates itself: its own queue, key, FTP account and recipient address.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use lettre::message::{Attachment, MultiPart, SinglePart, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode};
use tokio::io::AsyncReadExt;

use harness::FtpsServer;

/// Bounds every network step so a broken service fails the test instead of hanging it.
const STEP: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .with_context(|| format!("{what} took longer than {STEP:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_amqp_publish_is_consumed_and_acked() -> Result<()> {
    let conn = within(
        "amqp connect",
        Connection::connect(&harness::amqp_url(), ConnectionProperties::default()),
    )
    .await?
    .context("connecting to RabbitMQ")?;
    let channel = conn.create_channel().await?;
    let queue = harness::unique("svc-amqp");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let body = format!("hello {queue}");
    let confirmation = within(
        "publish confirm",
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?,
    )
    .await??;
    match confirmation {
        Confirmation::Ack(None) => {}
        Confirmation::Ack(Some(returned)) => bail!("the broker returned the message: {returned:?}"),
        other => bail!("expected an ack, got {other:?}"),
    }

    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(), // manual ack
            FieldTable::default(),
        )
        .await?;
    let delivery = within("delivery", consumer.next())
        .await?
        .context("the consumer stream ended")??;
    assert_eq!(delivery.data, body.as_bytes());
    assert!(!delivery.redelivered);
    delivery.ack(BasicAckOptions::default()).await?;

    // Acked, so nothing is left behind: deleting the queue reports zero messages.
    let left = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    assert_eq!(left, 0, "messages left in {queue}");
    conn.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_set_nx_px_admits_one_setter_and_the_key_expires() -> Result<()> {
    let client = redis::Client::open(harness::redis_url())?;
    let mut con = within("redis connect", client.get_multiplexed_async_connection())
        .await?
        .context("connecting to Redis")?;
    let prefix = harness::unique("svc-redis");
    let key = format!("{prefix}:lock");

    let set_nx_px = |value: &str, ms: u64| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(value).arg("NX").arg("PX").arg(ms);
        cmd
    };
    let first: Option<String> = set_nx_px("token-a", 5000).query_async(&mut con).await?;
    assert_eq!(
        first.as_deref(),
        Some("OK"),
        "the first setter takes the key"
    );
    let second: Option<String> = set_nx_px("token-b", 5000).query_async(&mut con).await?;
    assert_eq!(
        second, None,
        "a second setter is refused while the key exists"
    );
    let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
    assert_eq!(value.as_deref(), Some("token-a"));
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut con).await?;
    assert!(
        pttl > 0 && pttl <= 5000,
        "the key carries its expiry: PTTL {pttl}"
    );

    // And it really expires: a short-lived key disappears by itself (bounded wait, real time).
    let short = format!("{prefix}:short");
    let set: Option<String> = redis::cmd("SET")
        .arg(&short)
        .arg("x")
        .arg("NX")
        .arg("PX")
        .arg(200)
        .query_async(&mut con)
        .await?;
    assert_eq!(set.as_deref(), Some("OK"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&short)
            .query_async(&mut con)
            .await?;
        if !exists {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{short} did not expire within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut con).await?;
    Ok(())
}

/// An FTPS control connection to the harness server, TLS verified against `ca_file` only.
async fn ftps_connect(
    server: &FtpsServer,
    ca_file: &std::path::Path,
) -> Result<AsyncRustlsFtpStream, FtpError> {
    let config = harness::client_config(ca_file);
    // One connector for the whole session: it holds rustls's session cache, which the data
    // connections need because vsftpd runs with require_ssl_reuse=YES.
    let connector = AsyncRustlsConnector::from(suppaftp::tokio_rustls::TlsConnector::from(config));
    let mut ftp = AsyncRustlsFtpStream::connect((server.host.as_str(), server.port)).await?;
    ftp.set_mode(Mode::Passive);
    // Data connections go to the control connection's host, whatever PASV announces.
    ftp.set_passive_nat_workaround(true);
    ftp.into_secure(connector, &server.host).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftps_login_upload_download_and_listing_work_with_a_verified_certificate() -> Result<()> {
    let server = harness::ftps().await;
    let account = server.create_account();
    let mut ftp = within("ftps connect", ftps_connect(server, &server.ca_file))
        .await?
        .context("FTPS connection with the harness CA")?;
    within("login", ftp.login(&account.user, &account.password)).await??;
    assert_eq!(
        within("pwd", ftp.pwd()).await??,
        "/",
        "chrooted to the home"
    );
    // suppaftp starts in ASCII mode and then rewrites LF as CRLF in put_file/append_file: bytes
    // (and so hashes) only survive a transfer in binary mode.
    within("type i", ftp.transfer_type(FileType::Binary)).await??;

    // Upload: lands in the account's home on disk.
    let uploaded = b"email,first_name\nada@example.test,Ada\n".to_vec();
    let written = within(
        "upload",
        ftp.put_file("/uploads/user-import.csv", &mut uploaded.as_slice()),
    )
    .await??;
    assert_eq!(written, uploaded.len() as u64);
    assert_eq!(
        account.read("uploads/user-import.csv").as_deref(),
        Some(uploaded.as_slice())
    );

    // Download: a file placed by the test comes back byte for byte.
    let placed: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    account.put("log/user-import.log", &placed);
    let mut stream = within("retr", ftp.retr_as_stream("/log/user-import.log")).await??;
    let mut downloaded = Vec::new();
    within("download", stream.read_to_end(&mut downloaded)).await??;
    within("finish retr", stream.finish()).await??;
    assert_eq!(downloaded, placed);

    // Listing: the contract's folders at the root, the uploaded file in uploads/.
    let root = within("nlst /", ftp.nlst(Some("/"))).await??;
    for dir in ["uploads", "tmp", "log", "reports"] {
        assert!(
            root.iter().any(|n| n.trim_start_matches('/') == dir),
            "{dir} missing from {root:?}"
        );
    }
    let uploads = within("list uploads", ftp.list(Some("/uploads"))).await??;
    assert!(
        uploads.iter().any(|l| l.ends_with("user-import.csv")),
        "uploads listing: {uploads:?}"
    );
    assert_eq!(account.list("uploads"), vec!["user-import.csv".to_owned()]);

    within("quit", ftp.quit()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftps_refuses_a_server_certificate_from_an_unknown_ca() -> Result<()> {
    let server = harness::ftps().await;
    let result = within("ftps connect", ftps_connect(server, &server.other_ca_file)).await?;
    match result {
        Ok(_) => bail!("the TLS handshake succeeded with an unrelated CA as the only root"),
        Err(FtpError::SecureError(message)) => {
            assert!(
                message.contains("certificate") && message.contains("UnknownIssuer"),
                "expected an unknown-issuer certificate error, got: {message}"
            );
        }
        Err(other) => bail!("expected a certificate error, got: {other:?}"),
    }
    // The same server, trusted through the right CA, accepts: the refusal was the CA's doing.
    let account = server.create_account();
    let mut ftp = within("ftps connect", ftps_connect(server, &server.ca_file)).await??;
    within("login", ftp.login(&account.user, &account.password)).await??;
    within("quit", ftp.quit()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftps_refuses_a_login_without_tls() -> Result<()> {
    let server = harness::ftps().await;
    let account = server.create_account();
    let mut ftp = within(
        "ftp connect",
        AsyncRustlsFtpStream::connect((server.host.as_str(), server.port)),
    )
    .await??;
    let result = within("plain login", ftp.login(&account.user, &account.password)).await?;
    match result {
        Err(FtpError::UnexpectedResponse(response)) => {
            assert_eq!(
                response.status.code(),
                530,
                "expected 530 for a plaintext login, got {response:?}"
            );
        }
        other => bail!("a plaintext login must be refused, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_sent_over_smtp_is_read_back_with_subject_recipient_body_and_attachment()
-> Result<()> {
    let sink = harness::smtp().await;
    let to = format!("{}@example.test", harness::unique("admin"));
    let subject = "User import report: 2 imported, 1 failed ✓";
    let body = "Hello,\nthe import of user-import.csv finished.\n";
    let report = b"line,email,status\n2,ada@example.test,created\n".to_vec();
    let message = Message::builder()
        .from("User Import <user-import@example.test>".parse()?)
        .to(to.parse()?)
        .subject(subject)
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain(body.to_owned()))
                .singlepart(
                    Attachment::new("report.csv".to_owned())
                        .body(report.clone(), ContentType::parse("text/csv")?),
                ),
        )?;
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(sink.host.as_str())
        .port(sink.port)
        .timeout(Some(STEP))
        .build();
    let response = within("smtp send", mailer.send(message)).await??;
    assert!(response.is_positive(), "{response:?}");

    let mails = sink
        .wait_for_messages(&to, 1, Duration::from_secs(20))
        .await;
    assert_eq!(mails.len(), 1, "exactly one message for {to}");
    let mail = &mails[0];
    assert_eq!(mail.subject, subject);
    assert_eq!(mail.to, vec![to.clone()]);
    assert_eq!(mail.envelope_to, vec![to.clone()]);
    assert_eq!(mail.from, "user-import@example.test");
    assert_eq!(
        mail.body_text.replace("\r\n", "\n").trim_end(),
        body.trim_end()
    );
    assert_eq!(mail.attachments, vec![("report.csv".to_owned(), report)]);
    assert!(mail.header("Date").is_some(), "{:?}", mail.headers);
    Ok(())
}
