//! A small SMTP relay over TLS for tests of TLS clients (the worker's mailer, the doctor's SMTP
//! check): TLS from the first byte, or after `STARTTLS`, with the harness's server certificate;
//! it accepts every address and message and records what it was sent. One session, then it ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use shared::settings::{SmtpSettings, SmtpTls};

use super::certs::TestCerts;

/// What the relay saw: the commands (those before TLS as `plain: …`) and the message's data,
/// dot-stuffing removed.
#[derive(Debug, Default)]
pub struct Seen {
    pub commands: Vec<String>,
    pub data: Vec<u8>,
}

fn read_line(r: &mut impl BufRead) -> Option<String> {
    let mut line = Vec::new();
    match r.read_until(b'\n', &mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(String::from_utf8_lossy(&line).into_owned()),
    }
}

/// The TLS part of the session: EHLO, MAIL, RCPT, DATA (read up to the lone dot), QUIT.
fn over_tls(tls: &mut BufReader<impl Read + Write>, seen: &mut Seen) {
    while let Some(line) = read_line(tls) {
        let line = line.trim_end().to_owned();
        seen.commands.push(line.clone());
        let verb = line.split([' ', ':']).next().unwrap_or("").to_owned();
        let answer: &[u8] = match verb.as_str() {
            "EHLO" => b"250-relay.test\r\n250 8BITMIME\r\n",
            "DATA" => b"354 go ahead\r\n",
            "QUIT" => b"221 bye\r\n",
            _ => b"250 ok\r\n",
        };
        let _ = tls.get_mut().write_all(answer);
        let _ = tls.get_mut().flush();
        if verb == "DATA" {
            while let Some(data) = read_line(tls) {
                if data == ".\r\n" {
                    break;
                }
                let unstuffed = data.strip_prefix('.').unwrap_or(&data);
                seen.data.extend_from_slice(unstuffed.as_bytes());
            }
            let _ = tls.get_mut().write_all(b"250 2.0.0 queued\r\n");
            let _ = tls.get_mut().flush();
        }
        if verb == "QUIT" {
            return;
        }
    }
}

/// A relay on a free port with the test certificate: STARTTLS after a plain EHLO, or TLS from
/// the first byte (`implicit`).
pub fn relay(certs: &TestCerts, implicit: bool) -> (u16, std::thread::JoinHandle<Seen>) {
    let config = super::certs::server_config(&certs.server_cert, &certs.server_key);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let relay = std::thread::spawn(move || {
        let mut seen = Seen::default();
        let Ok((mut tcp, _)) = listener.accept() else {
            return seen;
        };
        let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)));
        if !implicit {
            let _ = tcp.write_all(b"220 relay.test ESMTP\r\n");
            let mut plain = BufReader::new(tcp.try_clone().unwrap_or_else(|e| panic!("{e}")));
            while let Some(line) = read_line(&mut plain) {
                let line = line.trim_end().to_owned();
                seen.commands.push(format!("plain: {line}"));
                let answer: &[u8] = match line.as_str() {
                    "STARTTLS" => b"220 2.0.0 go ahead\r\n",
                    l if l.starts_with("EHLO") => b"250-relay.test\r\n250 STARTTLS\r\n",
                    _ => b"530 5.7.0 STARTTLS first\r\n",
                };
                let _ = tcp.write_all(answer);
                if line == "STARTTLS" {
                    break;
                }
            }
        }
        let conn = rustls::ServerConnection::new(config).unwrap_or_else(|e| panic!("{e}"));
        let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
        if implicit {
            let _ = tls.get_mut().write_all(b"220 relay.test ESMTP\r\n");
            let _ = tls.get_mut().flush();
        }
        over_tls(&mut tls, &mut seen);
        seen
    });
    (port, relay)
}

/// Settings for a client of the relay on `port`: `tls` as given, trusting `ca` only, no login.
pub fn settings(port: u16, tls: SmtpTls, ca: &Path) -> SmtpSettings {
    SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        tls,
        ca_file: Some(ca.to_owned()),
        username: None,
        password: shared::secret::Secret::default(),
        from: "User import <ui@fleet.example.com>".into(),
        timeout: std::time::Duration::from_secs(10),
    }
}
