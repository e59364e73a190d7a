//! Test certificates, made with the `openssl` CLI the same way `scripts/stack.sh` makes them: a
//! CA, a server leaf signed by it, and an unrelated second CA for "unknown issuer" tests. Also
//! the rustls client configuration that trusts exactly one CA file.
//!
//! The leaf is `CA:FALSE` + `serverAuth` + SAN `DNS:localhost, IP:127.0.0.1`: rustls rejects a
//! self-signed `CA:TRUE` leaf (`CaUsedAsEndEntity`), so a two-level chain is needed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::process::run_ok;

/// Files of one generated set.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA that signed `server_cert`.
    pub ca_file: PathBuf,
    /// An unrelated CA: a client trusting only it must refuse the server.
    pub other_ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Generates a fresh set into `dir` (created if needed).
pub fn generate(dir: &Path) -> TestCerts {
    fs::create_dir_all(dir)
        .unwrap_or_else(|e| panic!("harness: cannot create {}: {e}", dir.display()));
    let p = |name: &str| dir.join(name);
    let s = |path: &PathBuf| path.to_string_lossy().into_owned();

    make_ca(&p("ca.pem"), &p("ca.key"), "user-import harness CA");
    make_ca(
        &p("other-ca.pem"),
        &p("other-ca.key"),
        "unrelated harness CA",
    );

    let ext = p("server.ext");
    fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap_or_else(|e| panic!("harness: cannot write {}: {e}", ext.display()));
    run_ok(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &s(&p("server.key")),
            "-out",
            &s(&p("server.csr")),
        ],
    );
    let serial = format!("0x{:016x}", rand::random::<u64>());
    run_ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &s(&p("server.csr")),
            "-CA",
            &s(&p("ca.pem")),
            "-CAkey",
            &s(&p("ca.key")),
            "-set_serial",
            &serial,
            "-days",
            "30",
            "-sha256",
            "-extfile",
            &s(&ext),
            "-out",
            &s(&p("server.pem")),
        ],
    );
    TestCerts {
        ca_file: p("ca.pem"),
        other_ca_file: p("other-ca.pem"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
    }
}

fn make_ca(cert: &Path, key: &Path, cn: &str) {
    run_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-sha256",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &key.to_string_lossy(),
            "-out",
            &cert.to_string_lossy(),
        ],
    );
}

/// A rustls client configuration (aws-lc-rs provider) whose only trust anchor is `ca_file`.
pub fn client_config(ca_file: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .unwrap_or_else(|e| panic!("harness: cannot read {}: {e}", ca_file.display()));
    for cert in certs {
        let cert =
            cert.unwrap_or_else(|e| panic!("harness: bad PEM in {}: {e}", ca_file.display()));
        roots
            .add(cert)
            .unwrap_or_else(|e| panic!("harness: bad CA in {}: {e}", ca_file.display()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("harness: rustls protocol versions: {e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A rustls server configuration (aws-lc-rs provider) presenting `cert` with its `key`: for the
/// small TLS servers a test runs itself (an SMTP relay speaking STARTTLS).
pub fn server_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::PrivateKeyDer;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap_or_else(|e| panic!("harness: cannot read {}: {e}", cert.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("harness: bad PEM in {}: {e}", cert.display()));
    let key = PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| panic!("harness: bad key in {}: {e}", key.display()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("harness: rustls protocol versions: {e}"))
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap_or_else(|e| panic!("harness: the server certificate: {e}"));
    Arc::new(config)
}
