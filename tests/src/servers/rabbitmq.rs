//! Private RabbitMQ nodes for tests that restart, stop or start the broker: a new node per
//! `private_broker()` call, never shared, so restarting it disturbs no other test (the machine's
//! broker on 5672 is never touched).
//!
//! Each node is `ui-it-<pid>-<n>@localhost` with everything of its own under
//! `<process_dir>/rabbitmq/ui-it-<pid>-<n>/`: `home/` (HOME, holding the Erlang cookie that
//! `rabbitmqctl` must share), `mnesia/`, `log/`, `rabbitmq.conf`, an empty `conf.d/`, an empty
//! plugin list (`[].`: no management plugin) and an empty `rabbitmq-env.conf` that shields the
//! node from the machine's `/etc/rabbitmq/rabbitmq-env.conf` (which names `rabbit@localhost`).
//! Ports: one block found free at start-up — AMQP on 127.0.0.1 (`listeners.tcp.1`), the Erlang
//! distribution port right after it (`RABBITMQ_DIST_PORT`, loopback only), and ten ports for the
//! `rabbitmqctl` nodes (`RABBITMQ_CTL_DIST_PORT_MIN/MAX`), so nothing collides with the machine's
//! broker (5672, 25672, 35672–35682). The machine's epmd (4369) is used and never stopped.
//!
//! Processes: `rabbitmq-server` normally forks `erl` into the background and relays signals from
//! a shell; with `RABBITMQ_ALLOW_INPUT` set it `exec`s instead (`-noinput` is added back through
//! `RABBITMQ_SERVER_START_ARGS`), so the process the watchdog of `process::Supervised` signals is
//! `beam.smp` itself: when the test process ends, however it ends, the node gets SIGTERM (a clean
//! stop, ~2–3 s) and SIGKILL 5 s later. beam's helpers (`erl_child_setup`, `inet_gethost`, the
//! disk monitor shell) exit when beam does. `Drop` stops the node itself (SIGTERM, then SIGKILL
//! after 15 s), waits for it to be gone and removes its directory (kept when the test is
//! panicking, for its logs; the next test process removes it with the rest of `process_dir`).
//!
//! Every wait is bounded and fails the test with the tails of the node's logs.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};

use super::process::{self, Supervised};
use super::process_dir;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const ENV: &str = "/usr/bin/env";

/// A fresh node boots in ~8–12 s on two cores; allow for a machine busy with other tests.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// One `rabbitmqctl` call (each starts an Erlang VM: ~1.3 s when idle).
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// An AMQP connection after the node reports it has started.
const AMQP_TIMEOUT: Duration = Duration::from_secs(30);
/// A clean stop (SIGTERM) before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The line the node logs when `rabbit` has booted (first start and every `start_app`).
const STARTED_LINE: &str = "Server startup complete";

/// A RabbitMQ node of its own for one test (see the module documentation). Dropping it stops
/// the node and removes its directory.
#[derive(Debug)]
pub struct PrivateBroker {
    /// The AMQP port on 127.0.0.1.
    pub port: u16,
    /// The Erlang node name, e.g. `ui-it-4242-1@localhost`.
    pub node: String,
    /// The node's own log (`log/<node>.log`).
    pub log_file: PathBuf,
    node_ref: Arc<Node>,
}

/// A new private node, booted and accepting AMQP connections (guest/guest from loopback).
pub async fn private_broker() -> PrivateBroker {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let short = format!(
        "ui-it-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let node = Arc::new(blocking(move || Node::start(&short)).await);
    // Constructed before the AMQP check so a failure there still stops the node (Drop).
    let broker = PrivateBroker {
        port: node.port,
        node: node.name.clone(),
        log_file: node.node_log.clone(),
        node_ref: node,
    };
    if let Err(e) = broker.node_ref.wait_amqp().await {
        panic!("harness: {e}");
    }
    broker
}

impl PrivateBroker {
    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn amqp_url(&self) -> String {
        self.node_ref.amqp_url()
    }

    /// Restarts the broker: `rabbitmqctl stop_app` (closes every client connection with 320
    /// CONNECTION_FORCED and closes the listener), then `start_app`, then waits until
    /// `await_startup` succeeds and an AMQP connection is accepted. Durable queues and persistent
    /// messages survive. The Erlang VM stays up, which keeps this at ~5 s instead of the ~12 s a
    /// full node restart takes. Panics (with the log tails) if any step fails or times out.
    pub async fn restart(&self) {
        let node = Arc::clone(&self.node_ref);
        let result = blocking(move || node.stop_app().and_then(|()| node.start_app())).await;
        if let Err(e) = result {
            panic!("harness: restarting {}: {e}", self.node);
        }
        if let Err(e) = self.node_ref.wait_amqp().await {
            panic!("harness: {e}");
        }
    }

    /// Stops the broker application (`rabbitmqctl stop_app`): connections are closed and new ones
    /// refused until `start_app`. The Erlang node keeps running.
    pub async fn stop_app(&self) {
        let node = Arc::clone(&self.node_ref);
        if let Err(e) = blocking(move || node.stop_app()).await {
            panic!("harness: stopping the app of {}: {e}", self.node);
        }
    }

    /// Starts the broker application again and waits until it accepts AMQP connections.
    pub async fn start_app(&self) {
        let node = Arc::clone(&self.node_ref);
        if let Err(e) = blocking(move || node.start_app()).await {
            panic!("harness: starting the app of {}: {e}", self.node);
        }
        if let Err(e) = self.node_ref.wait_amqp().await {
            panic!("harness: {e}");
        }
    }

    /// The tails of the node's log and of its console output, for failure messages.
    pub fn log_tail(&self) -> String {
        self.node_ref.log_tail()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.node_ref.shutdown();
        if std::thread::panicking() {
            // A failing test: keep the logs; the next test process removes the directory.
            eprintln!(
                "harness: RabbitMQ node {} stopped; its logs are kept in {}",
                self.node,
                self.node_ref.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.node_ref.dir);
        }
    }
}

/// Runs blocking harness work off the async worker threads, re-raising its panic.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("harness: a RabbitMQ harness task failed: {e}"),
        },
    }
}

#[derive(Debug)]
struct Node {
    name: String,
    dir: PathBuf,
    home: PathBuf,
    env_conf: PathBuf,
    node_log: PathBuf,
    console_log: PathBuf,
    pid_file: PathBuf,
    port: u16,
    ctl_ports: (u16, u16),
    server: Mutex<Option<Supervised>>,
    ctl_calls: AtomicU32,
}

impl Node {
    /// Boots `<short>@localhost`, retrying on new ports when the node dies at start-up (a port
    /// taken between picking and binding). Panics with the log tails otherwise.
    fn start(short: &str) -> Node {
        process::require_program(Path::new(SERVER));
        process::require_program(Path::new(CTL));
        let dir = process_dir().join("rabbitmq").join(short);
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let _ = fs::remove_dir_all(&dir);
            let node = Node::spawn(short, &dir);
            match node.wait_booted(0, BOOT_TIMEOUT) {
                Ok(()) => return node,
                Err(e) => {
                    let died = node.exited().is_some();
                    node.shutdown();
                    if !died {
                        panic!("harness: {e}");
                    }
                    last_error = e;
                }
            }
        }
        panic!("harness: RabbitMQ node {short} failed to start three times; last: {last_error}");
    }

    fn spawn(short: &str, dir: &Path) -> Node {
        let name = format!("{short}@localhost");
        let home = dir.join("home");
        let mnesia = dir.join("mnesia");
        let log_dir = dir.join("log");
        let conf_d = dir.join("conf.d");
        for d in [&home, &mnesia, &log_dir, &conf_d] {
            fs::create_dir_all(d)
                .unwrap_or_else(|e| panic!("harness: cannot create {}: {e}", d.display()));
        }
        // Written before the node and rabbitmqctl start, so neither races to create it. Erlang
        // insists that only the owner may read it.
        let cookie: String = (0..20)
            .map(|_| char::from(b'A' + rand::random_range(0..26u8)))
            .collect();
        let cookie_file = home.join(".erlang.cookie");
        write(&cookie_file, &cookie);
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&cookie_file, fs::Permissions::from_mode(0o400))
                .unwrap_or_else(|e| panic!("harness: cannot chmod {}: {e}", cookie_file.display()));
        }

        // AMQP, distribution, then ten ports for rabbitmqctl's own Erlang nodes.
        let (first, last) = process::free_port_block(12);
        let (port, dist_port, ctl_ports) = (first, first + 1, (first + 2, last));
        let conf = dir.join("rabbitmq.conf");
        write(
            &conf,
            &format!(
                "listeners.tcp.1 = 127.0.0.1:{port}\n\
                 distribution.listener.interface = 127.0.0.1\n\
                 distribution.listener.port_range.min = {dist_port}\n\
                 distribution.listener.port_range.max = {dist_port}\n"
            ),
        );
        let plugins = dir.join("enabled_plugins");
        write(&plugins, "[].\n");
        let env_conf = dir.join("rabbitmq-env.conf");
        write(&env_conf, "");
        let pid_file = dir.join("rabbitmq.pid");
        let console_log = dir.join("console.log");

        let p = |path: &Path| path.to_string_lossy().into_owned();
        let vars = [
            format!("HOME={}", p(&home)),
            format!("RABBITMQ_NODENAME={name}"),
            "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1".to_owned(),
            format!("RABBITMQ_NODE_PORT={port}"),
            format!("RABBITMQ_DIST_PORT={dist_port}"),
            format!("RABBITMQ_CONFIG_FILE={}", p(&conf)),
            format!("RABBITMQ_CONFIG_FILES={}", p(&conf_d)),
            format!(
                "RABBITMQ_ADVANCED_CONFIG_FILE={}",
                p(&dir.join("advanced.config"))
            ),
            format!("RABBITMQ_CONF_ENV_FILE={}", p(&env_conf)),
            format!("RABBITMQ_ENABLED_PLUGINS_FILE={}", p(&plugins)),
            format!("RABBITMQ_MNESIA_BASE={}", p(&mnesia)),
            format!("RABBITMQ_LOG_BASE={}", p(&log_dir)),
            format!("RABBITMQ_PID_FILE={}", p(&pid_file)),
            "ERL_EPMD_ADDRESS=127.0.0.1".to_owned(),
            // `exec erl` instead of a signal-relaying shell: the watchdog signals beam.smp.
            "RABBITMQ_ALLOW_INPUT=true".to_owned(),
            "RABBITMQ_SERVER_START_ARGS=-noinput".to_owned(),
            // The user flag `-ui_it_node` only puts the node name on beam's command line, so
            // `pgrep -f <node>` finds it.
            format!(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {{127,0,0,1}} \
                 -ui_it_node {name}"
            ),
        ];
        let mut args: Vec<&str> = vars.iter().map(String::as_str).collect();
        args.push(SERVER);
        let server = Supervised::spawn(
            &format!("RabbitMQ node {name}"),
            Path::new(ENV),
            &args,
            &console_log,
        );
        Node {
            node_log: log_dir.join(format!("{name}.log")),
            name,
            dir: dir.to_owned(),
            home,
            env_conf,
            console_log,
            pid_file,
            port,
            ctl_ports,
            server: Mutex::new(Some(server)),
            ctl_calls: AtomicU32::new(0),
        }
    }

    fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The exit status of the node's process if it has stopped (or was never kept).
    fn exited(&self) -> Option<ExitStatus> {
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        server.as_ref().and_then(Supervised::exited)
    }

    /// Waits until the node's log has the start-up line after byte `since` (the log is cheap to
    /// poll; `await_startup` alone re-checks only every 10 s), then confirms with
    /// `rabbitmqctl await_startup`.
    fn wait_booted(&self, since: u64, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "RabbitMQ node {} exited during start-up ({status})\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            if log_has(&self.node_log, since, STARTED_LINE) {
                break;
            }
            if started.elapsed() >= timeout {
                return Err(format!(
                    "RabbitMQ node {} did not start within {timeout:?}\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = timeout.saturating_sub(started.elapsed()).max(CTL_TIMEOUT);
        let secs = left.as_secs().to_string();
        self.ctl(
            &["await_startup", "--timeout", &secs],
            left + Duration::from_secs(10),
        )
        .map(drop)
    }

    fn stop_app(&self) -> Result<(), String> {
        self.ctl(&["stop_app"], CTL_TIMEOUT)?;
        // stop_app returns once `rabbit` has stopped, listener included; make sure of it.
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{addr} still accepts connections after stop_app\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn start_app(&self) -> Result<(), String> {
        let since = fs::metadata(&self.node_log).map(|m| m.len()).unwrap_or(0);
        self.ctl(&["start_app"], BOOT_TIMEOUT)?;
        self.wait_booted(since, BOOT_TIMEOUT)
    }

    /// Connects with lapin (and closes again) until it works or `AMQP_TIMEOUT` passes.
    async fn wait_amqp(&self) -> Result<(), String> {
        let url = self.amqp_url();
        let deadline = Instant::now() + AMQP_TIMEOUT;
        loop {
            let last = match tokio::time::timeout(
                Duration::from_secs(10),
                Connection::connect(&url, ConnectionProperties::default()),
            )
            .await
            {
                Ok(Ok(conn)) => {
                    let _ = conn.close(200, "harness readiness check".into()).await;
                    return Ok(());
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connect timed out".to_owned(),
            };
            if Instant::now() >= deadline || self.exited().is_some() {
                return Err(format!(
                    "RabbitMQ node {} accepts no AMQP connection on {url} within {AMQP_TIMEOUT:?} \
                     (last: {last})\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `rabbitmqctl -n NODE args…` with the node's HOME (cookie), killed after `timeout`.
    fn ctl(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let n = self.ctl_calls.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.join(format!("ctl-{n}.out"));
        let out = File::create(&out_path)
            .map_err(|e| format!("cannot create {}: {e}", out_path.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot clone a file handle: {e}"))?;
        let what = format!("rabbitmqctl -n {} {}", self.name, args.join(" "));
        let mut child = Command::new(CTL)
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .env("HOME", &self.home)
            .env("RABBITMQ_CONF_ENV_FILE", &self.env_conf)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_CTL_DIST_PORT_MIN", self.ctl_ports.0.to_string())
            .env("RABBITMQ_CTL_DIST_PORT_MAX", self.ctl_ports.1.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "`{what}` did not finish within {timeout:?}: {}\n{}",
                        read_lossy(&out_path),
                        self.log_tail()
                    ));
                }
                Err(e) => return Err(format!("waiting for `{what}`: {e}")),
            }
        };
        let text = read_lossy(&out_path);
        let _ = fs::remove_file(&out_path);
        if status.success() {
            Ok(text)
        } else {
            Err(format!(
                "`{what}` failed ({status}): {}\n{}",
                text.trim(),
                self.log_tail()
            ))
        }
    }

    /// The pid of this node's beam.smp, from its pid file, checked against the command line (so
    /// a recycled pid is never signalled).
    fn beam_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let marker = format!("-ui_it_node\0{}\0", self.name);
        let found = cmdline
            .windows(marker.len())
            .any(|w| w == marker.as_bytes());
        found.then_some(pid)
    }

    /// Stops the node: SIGTERM to beam (a clean stop), SIGKILL after `STOP_TIMEOUT`, then drops
    /// the supervisor (its watchdog ends whatever might be left). Bounded; never panics.
    fn shutdown(&self) {
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(server) = server else {
            return;
        };
        for (signal, wait) in [("-TERM", STOP_TIMEOUT), ("-KILL", Duration::from_secs(5))] {
            if server.exited().is_some() {
                break;
            }
            let Some(pid) = self.beam_pid() else {
                break;
            };
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + wait;
            while server.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        drop(server);
    }

    fn log_tail(&self) -> String {
        format!(
            "{}\n{}",
            process::log_tail(&self.node_log, 40),
            process::log_tail(&self.console_log, 15)
        )
    }
}

fn write(path: &Path, text: &str) {
    fs::write(path, text)
        .unwrap_or_else(|e| panic!("harness: cannot write {}: {e}", path.display()));
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Whether the file has `needle` after byte `since`.
fn log_has(path: &Path, since: u64, needle: &str) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    if f.seek(SeekFrom::Start(since)).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return false;
    }
    String::from_utf8_lossy(&buf).contains(needle)
}
