//! Child processes for the harness: servers that cannot outlive the test process, one-shot
//! commands with clear failures, free ports, and bounded readiness waits.
//!
//! Orphans are avoided without `prctl` or unsafe code by a *lifeline pipe*: every server runs
//! under a tiny `/bin/sh` watchdog whose stdin is a pipe from this process. The write end is kept
//! open (in a `static`, never dropped) until the process ends — normally, by a panic, or by
//! `SIGKILL` — at which point the kernel closes it, the watchdog's `cat` sees end-of-file and the
//! watchdog terminates the server. std creates the pipe with `O_CLOEXEC`, so no other child
//! inherits the write end and keeps the lifeline artificially alive.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a server may take to greet before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The watchdog run by `/bin/sh -c`; `"$@"` is the server's command line.
///
/// Its own exit status is the server's, so the harness can tell a server that died at start-up
/// (a port taken, a bad config line) from one still starting.
const WATCHDOG: &str = r#"
exec 3<&0
"$@" </dev/null &
server=$!
(
  cat <&3 >/dev/null
  kill -TERM "$server" 2>/dev/null || exit 0
  i=0
  while kill -0 "$server" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "$server" 2>/dev/null
) &
watcher=$!
exec 3<&-
wait "$server"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"#;

/// A server started under the watchdog. Keep it in a `static`: dropping it closes the lifeline
/// and stops the server.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    child: Mutex<Child>,
    log: PathBuf,
}

impl Supervised {
    /// Starts `program args…` under the watchdog, stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[&str], log: &Path) -> Supervised {
        require_program(program);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("harness: cannot open log {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("harness: cannot clone log handle: {e}"));
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("harness-watchdog")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("harness: cannot start {name} ({}): {e}", program.display())
            });
        Supervised {
            name: name.to_owned(),
            child: Mutex::new(child),
            log: log.to_owned(),
        }
    }

    /// The server's exit status if it has already stopped.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.try_wait().ok().flatten()
    }

    /// Waits until `addr` sends a first line starting with `220` (the FTP and SMTP greeting).
    /// Errors (with the log tail) if the server exits first or the timeout passes.
    pub fn wait_for_greeting(&self, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited during start-up ({status})\n{}",
                    self.name,
                    log_tail(&self.log, 30)
                ));
            }
            match read_greeting(addr) {
                Ok(line) if line.starts_with("220") => return Ok(()),
                Ok(line) => last = format!("unexpected greeting {line:?}"),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not greet on {addr} within {timeout:?} (last: {last})\n{}",
                    self.name,
                    log_tail(&self.log, 30)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn read_greeting(addr: SocketAddr) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    // Be polite to the SMTP sink; vsftpd simply sees the connection close.
    let _ = (&stream).write_all(b"QUIT\r\n");
    Ok(line.trim_end().to_owned())
}

/// Fails the test with a clear message when a program the harness needs is missing.
pub fn require_program(program: &Path) {
    let found = if program.components().count() > 1 {
        program.is_file()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
    };
    assert!(
        found,
        "harness: `{}` is not installed; the integration tests need the real servers \
         (run `scripts/stack.sh up` as root, or apt-get install vsftpd python3-aiosmtpd openssl)",
        program.display()
    );
}

/// Output of a finished one-shot command.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs a command to completion, feeding `stdin`; panics only if it cannot be started.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    require_program(Path::new(program));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("harness: cannot run {program}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("harness: cannot write to {program}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("harness: {program} did not finish: {e}"));
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a command that must succeed.
pub fn run_ok(program: &str, args: &[&str]) -> Output {
    let out = run(program, args, None);
    assert!(
        out.success(),
        "harness: `{program} {}` failed ({:?}): {}{}",
        args.join(" "),
        out.code,
        out.stderr,
        out.stdout
    );
    out
}

/// A loopback port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("harness: cannot bind a loopback port: {e}"))
}

/// A block of `len` consecutive ports in 40000–59999, all bindable right now (checked by
/// binding every one of them at once). The random start keeps parallel test processes apart.
pub fn free_port_block(len: u16) -> (u16, u16) {
    for _ in 0..200 {
        let start = 40_000 + rand::random_range(0..(20_000 - len));
        let held: Result<Vec<TcpListener>, _> = (start..start + len)
            .map(|p| TcpListener::bind(("127.0.0.1", p)))
            .collect();
        if held.is_ok() {
            return (start, start + len - 1);
        }
    }
    panic!("harness: found no block of {len} free ports in 40000-59999");
}

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!(
        "----- last lines of {} -----\n{}",
        path.display(),
        all[from..].join("\n")
    )
}

/// Creates a directory (and parents) readable by everyone: FTP users must be able to traverse
/// down to their homes.
pub fn public_dir(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(path)
        .unwrap_or_else(|e| panic!("harness: cannot create {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("harness: cannot chmod {}: {e}", path.display()));
}

/// Whether a process with this pid exists (used to find leftovers of dead test processes).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}
