//! Fetch+hash of one large file over each transport, next to the usual command-line clients, in
//! one run on the test harness's own servers (loopback): OpenSSH SFTP (ours, `curl sftp://`,
//! OpenSSH's `sftp`), ProFTPD and vsftpd over FTPS (ours, `curl --ssl-reqd`).
//!
//! "Ours" is what a job does: `worker::account::Connector::connect` (login included), the
//! pipeline's fetch (`account::fetch_file`: SIZE, the download to a temporary file through a
//! buffered writer, SHA1 on the way) and QUIT. The other clients write to /dev/null and do not
//! hash, so the ratio is, if anything, in their favour. Runs are interleaved per transport.
//! Prints one line per run and one summary line per transport and client (best and median).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use shared::ApiKey;
use shared::registry::{Registry, Tenant};
use shared::settings::FtpsSettings;
use worker::account::ftps::FtpsConnector;
use worker::account::sftp::SftpConnector;
use worker::account::{Connector, fetch_file};

#[derive(Debug, Parser)]
#[command(name = "bench-transports")]
struct Cli {
    /// Size of the file, MiB.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Runs per client.
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

const PATH: &str = "/uploads/big.csv";

fn tenant(name: &str, access: &str) -> anyhow::Result<Tenant> {
    let text = format!(
        "[[tenant]]\nname = \"{name}\"\nregion = \"eu\"\nportal_domain = \"{name}.learning-admin.com\"\n\
         api_base_url = \"http://127.0.0.1:9/\"\nadmin = {{ username = \"admin\", email = \"admin@example.com\" }}\n{access}\n"
    );
    let registry = Registry::parse(Path::new("bench.toml"), &text)?;
    registry
        .get(name)
        .cloned()
        .context("the tenant is not in its registry")
}

fn connector(ca: &Path) -> anyhow::Result<Connector> {
    let io = Duration::from_secs(120);
    let ftps = FtpsConnector::from_settings(&FtpsSettings {
        ca_file: Some(ca.to_owned()),
        connect_timeout: Duration::from_secs(10),
        io_timeout: io,
    })?;
    Ok(Connector::new(
        ftps,
        SftpConnector::new(Duration::from_secs(10), io, None),
    ))
}

/// A file of `mib` MiB of varied bytes (not all zeros: nothing on the way compresses anyway).
fn make_source(path: &Path, mib: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for i in 0..mib {
        let mut b = block.clone();
        b[0] = i as u8;
        out.write_all(&b)?;
    }
    out.flush()?;
    Ok(())
}

/// Replaces the contents of a file the account already owns with `source` (the owner stays).
fn fill(target: &Path, source: &Path) -> anyhow::Result<()> {
    std::fs::copy(source, target).with_context(|| format!("copying to {}", target.display()))?;
    Ok(())
}

struct Measured {
    transport: &'static str,
    client: &'static str,
    secs: Vec<f64>,
}

async fn ours(
    connector: &Connector,
    tenant: &Tenant,
    key: &ApiKey,
    work: &Path,
) -> anyhow::Result<(f64, u64, String)> {
    let started = Instant::now();
    let mut session = connector.connect(tenant, key).await?;
    let fetched = fetch_file(session.as_mut(), PATH, 8 << 30, work)
        .await?
        .context("no file")?;
    session.quit().await;
    let secs = started.elapsed().as_secs_f64();
    Ok((secs, fetched.size, fetched.sha1.as_str().to_owned()))
}

fn timed(cmd: &mut Command) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(secs)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bytes = cli.mib << 20;
    let scratch = tempfile::tempdir()?;
    let source = scratch.path().join("source.csv");
    make_source(&source, cli.mib)?;
    let sha1 = {
        let out = Command::new("sha1sum").arg(&source).output()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    println!("file mib={} sha1={sha1}", cli.mib);
    let work = scratch.path().join("work");
    std::fs::create_dir(&work)?;

    let vsftpd = harness::ftps().await;
    let proftpd = harness::proftpd().await;
    let sftp = harness::sftp().await;
    let v_acct = vsftpd.create_account();
    let p_acct = proftpd.create_account(&["uploads"]);
    let s_acct = sftp.create_account(&["uploads"]);
    v_acct.put(PATH, b"");
    fill(&v_acct.path(PATH), &source)?;
    p_acct.put(PATH, b"");
    fill(&p_acct.path(PATH), &source)?;
    s_acct.put(PATH, b"");
    fill(&s_acct.path(PATH), &source)?;

    // OpenSSH's client logs in with a key (it has no password option for batch use).
    let client_key = scratch.path().join("client");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&client_key)
        .status()?;
    anyhow::ensure!(st.success(), "ssh-keygen failed");
    s_acct.authorize_key(std::fs::read_to_string(client_key.with_extension("pub"))?.trim());
    let known_hosts = scratch.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {}\n", sftp.port, sftp.host_key),
    )?;
    let batch = scratch.path().join("batch");
    std::fs::write(&batch, format!("get /home{PATH} /dev/null\n"))?;
    // curl pins the host key by the SHA256 of its blob (base64, padded).
    let fp = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(known_hosts.as_os_str())
        .output()?;
    let fp = String::from_utf8_lossy(&fp.stdout);
    let mut pin = fp
        .split_whitespace()
        .find_map(|w| w.strip_prefix("SHA256:"))
        .context("no host key fingerprint")?
        .to_owned();
    while pin.len() % 4 != 0 {
        pin.push('=');
    }

    let sftp_tenant = tenant(
        &s_acct.user,
        &format!(
            "transport = \"sftp\"\nftps_host = \"127.0.0.1\"\nsftp_port = {}\nsftp_host_key = \"{}\"",
            sftp.port, sftp.host_key
        ),
    )?;
    let p_tenant = tenant(
        &p_acct.user,
        &format!("ftps_host = \"127.0.0.1\"\nftps_port = {}", proftpd.port),
    )?;
    let v_tenant = tenant(
        &v_acct.user,
        &format!("ftps_host = \"127.0.0.1\"\nftps_port = {}", vsftpd.port),
    )?;
    let mut results: Vec<Measured> = Vec::new();
    let mut record = |transport, client, secs: f64, run| {
        println!(
            "run transport={transport} client={client} run={run} total_s={secs:.3} mib_s={:.1}",
            bytes as f64 / 1048576.0 / secs
        );
        match results
            .iter_mut()
            .find(|m| m.transport == transport && m.client == client)
        {
            Some(m) => m.secs.push(secs),
            None => results.push(Measured {
                transport,
                client,
                secs: vec![secs],
            }),
        }
    };

    // SFTP.
    let c = connector(&vsftpd.ca_file)?;
    let key = ApiKey::new(s_acct.password.clone());
    for run in 1..=cli.runs {
        let (secs, got, digest) = ours(&c, &sftp_tenant, &key, &work).await?;
        anyhow::ensure!(got == bytes && digest == sha1, "sftp: wrong bytes");
        record("sftp", "ours", secs, run);
        let secs = timed(
            Command::new("curl")
                .args(["-s", "-S", "--hostpubsha256", &pin, "-u"])
                .arg(format!("{}:{}", s_acct.user, s_acct.password))
                .arg(format!("sftp://127.0.0.1:{}/home{PATH}", sftp.port))
                .args(["-o", "/dev/null"]),
        )?;
        record("sftp", "curl", secs, run);
        let secs = timed(
            Command::new("sftp")
                .args(["-q", "-b"])
                .arg(&batch)
                .args(["-P", &sftp.port.to_string(), "-i"])
                .arg(&client_key)
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
                .arg(format!("{}@127.0.0.1", s_acct.user)),
        )?;
        record("sftp", "openssh-sftp", secs, run);
    }

    // FTPS: ProFTPD (session reuse required, TLS 1.3) and vsftpd.
    for (name, server_ca, port, user, password, tenant) in [
        (
            "ftps-proftpd",
            proftpd.ca_file.clone(),
            proftpd.port,
            p_acct.user.clone(),
            p_acct.password.clone(),
            &p_tenant,
        ),
        (
            "ftps-vsftpd",
            vsftpd.ca_file.clone(),
            vsftpd.port,
            v_acct.user.clone(),
            v_acct.password.clone(),
            &v_tenant,
        ),
    ] {
        let c = connector(&server_ca)?;
        let key = ApiKey::new(password.clone());
        for run in 1..=cli.runs {
            let (secs, got, digest) = ours(&c, tenant, &key, &work).await?;
            anyhow::ensure!(got == bytes && digest == sha1, "{name}: wrong bytes");
            record(name, "ours", secs, run);
            let secs = timed(
                Command::new("curl")
                    .args(["-s", "-S", "--ssl-reqd", "--ftp-skip-pasv-ip", "--cacert"])
                    .arg(&server_ca)
                    .arg("-u")
                    .arg(format!("{user}:{password}"))
                    .arg(format!("ftp://127.0.0.1:{port}{PATH}"))
                    .args(["-o", "/dev/null"]),
            )?;
            record(name, "curl", secs, run);
        }
    }

    for m in &results {
        let ours = results
            .iter()
            .find(|o| o.transport == m.transport && o.client == "ours")
            .map(|o| median(&o.secs))
            .unwrap_or(f64::NAN);
        println!(
            "summary transport={} client={} runs={} best_s={:.3} median_s={:.3} median_mib_s={:.1} wall_ratio_ours_to_this={:.2}",
            m.transport,
            m.client,
            m.secs.len(),
            m.secs.iter().copied().fold(f64::INFINITY, f64::min),
            median(&m.secs),
            bytes as f64 / 1048576.0 / median(&m.secs),
            ours / median(&m.secs),
        );
    }
    Ok(())
}
