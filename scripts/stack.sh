#!/usr/bin/env bash
# scripts/stack.sh — the local stack for development, demos and manual checks.
#
#   scripts/stack.sh up [--no-fake]   install what is missing, start everything, wait until ready
#   scripts/stack.sh status           one line per service: up/down, address, who started it
#   scripts/stack.sh stop             stop what this script started (reused servers are left alone)
#   scripts/stack.sh env              `export` lines for other scripts: eval "$(scripts/stack.sh env)"
#   scripts/stack.sh install          only install the missing Debian packages (e.g. for CI), and
#                                     unpack ProFTPD for the tests (scripts/proftpd-prepare.sh)
#
# Services, all on loopback:
#   RabbitMQ  127.0.0.1:5672 guest/guest   reused when one answers, else `rabbitmq-server -detached`
#   Redis     127.0.0.1:6379               reused when one answers, else started daemonized
#   vsftpd    127.0.0.1:${UI_FTPS_PORT:-2121}, explicit FTPS, passive ${UI_PASV_MIN:-30000}-${UI_PASV_MAX:-30049}
#             user `demo` (password = the demo tenant's key in .stack/secrets/demo)
#   sshd      127.0.0.1:${UI_SFTP_PORT:-2222}, SFTP only (chrooted internal-sftp), its own Ed25519
#             host key in .stack/ssh; user `demo-sftp` (password in .stack/secrets/demo-sftp).
#             The demo registry .stack/tenants.toml (config/tenants.example.toml plus the SFTP demo
#             tenant, its host key pinned) is written at `up`.
#   SMTP sink 127.0.0.1:${UI_SMTP_PORT:-2525}, stores a Maildir in .stack/mail
#   platform fake http://127.0.0.1:${UI_FAKE_PORT:-8089}, tenant demo.learning-admin.com
#
# State (certificates, secrets, configs, logs, pid files) lives in .stack/ at the repository root,
# which git ignores. Certificates and the demo secret are made once and kept. Every wait is bounded;
# a service that does not come up makes the script print its log tail and exit non-zero.
# Needs root (apt-get, useradd, vsftpd) on a Debian machine without systemd.
# shellcheck disable=SC2016 # inner `bash -c` scripts are single-quoted on purpose
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/.stack"
CERTS="$STATE/certs"
SECRETS="$STATE/secrets"
MAILDIR="$STATE/mail"
LOGS="$STATE/log"
RUN="$STATE/run"
PORTS_FILE="$STATE/ports.env"

AMQP_HOST=127.0.0.1
AMQP_PORT=5672
REDIS_PORT=6379
DEMO_USER=demo
DEMO_DOMAIN=demo.learning-admin.com
DEMO_ADMIN=demo.admin
FTP_ROOT=/srv/user-import-ftp
DEMO_HOME="$FTP_ROOT/$DEMO_USER"
SFTP_USER=demo-sftp
SFTP_DOMAIN=demo-sftp.learning-admin.com
# A chroot folder must be root's and writable by nobody else, all the way up.
SFTP_JAIL=/srv/user-import-sftp
SFTP_HOME="$SFTP_JAIL/$SFTP_USER/home"
SSH_DIR="$STATE/ssh"
REGISTRY="$STATE/tenants.toml"
WAIT_SECS=${UI_STACK_WAIT_SECS:-60}
# Only ever edited when this script starts the broker itself (see ensure_consumer_timeout).
RABBITMQ_CONF=${UI_RABBITMQ_CONF:-/etc/rabbitmq/rabbitmq.conf}
RABBITMQ_ENV_CONF=${UI_RABBITMQ_ENV_CONF:-/etc/rabbitmq/rabbitmq-env.conf}
# openssh-server: the test suite's SFTP server (its own sshd on a random port; the package's own
# service is not started here).
PACKAGES=(rabbitmq-server redis-server redis-tools vsftpd python3-aiosmtpd openssl lftp curl openssh-server)
# Debian's interpreter: it is the one that sees python3-aiosmtpd (a pyenv python3 on PATH does not).
PYTHON=/usr/bin/python3

log() { printf 'stack: %s\n' "$*" >&2; }
die() {
  printf 'stack: error: %s\n' "$*" >&2
  exit 1
}

# Print the last lines of the given log files, for a failed start.
tail_logs() {
  local f
  for f in "$@"; do
    if [[ -f $f ]]; then
      printf -- '----- last lines of %s -----\n' "$f" >&2
      tail -n 30 "$f" >&2 || true
    fi
  done
}

# The ports: at `up`, from the environment or the defaults, then recorded so that `status`, `stop`
# and `env` describe the stack that is actually running.
load_ports() {
  if [[ $1 == record ]]; then
    FTPS_PORT=${UI_FTPS_PORT:-2121}
    PASV_MIN=${UI_PASV_MIN:-30000}
    PASV_MAX=${UI_PASV_MAX:-30049}
    SMTP_PORT=${UI_SMTP_PORT:-2525}
    FAKE_PORT=${UI_FAKE_PORT:-8089}
    SFTP_PORT=${UI_SFTP_PORT:-2222}
    mkdir -p "$STATE"
    cat >"$PORTS_FILE" <<EOF
FTPS_PORT=$FTPS_PORT
PASV_MIN=$PASV_MIN
PASV_MAX=$PASV_MAX
SMTP_PORT=$SMTP_PORT
FAKE_PORT=$FAKE_PORT
SFTP_PORT=$SFTP_PORT
EOF
  else
    FTPS_PORT=2121 PASV_MIN=30000 PASV_MAX=30049 SMTP_PORT=2525 FAKE_PORT=8089 SFTP_PORT=2222
    # shellcheck source=/dev/null
    [[ -f $PORTS_FILE ]] && . "$PORTS_FILE"
  fi
  local p
  for p in "$FTPS_PORT" "$PASV_MIN" "$PASV_MAX" "$SMTP_PORT" "$FAKE_PORT" "$SFTP_PORT"; do
    if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then
      die "not a port number: '$p'"
    fi
  done
  ((PASV_MIN <= PASV_MAX)) || die "UI_PASV_MIN ($PASV_MIN) is above UI_PASV_MAX ($PASV_MAX)"
}

# ---------------------------------------------------------------------------------------------
# Probes (each bounded by `timeout`). The inner scripts are single-quoted on purpose: host and
# port arrive as their $0 and $1 (hence the file-wide SC2016 exception at the top).

tcp_open() { timeout 3 bash -c ': >"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

# The first line a server sends on connect (FTP and SMTP greet with "220 ...").
greeting() {
  timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" && IFS= read -r line <&3 && printf "%s" "$line"' \
    "$1" "$2" 2>/dev/null | tr -d '\r'
}
greets_220() {
  local line
  line=$(greeting "$1" "$2") || return 1
  [[ $line == 220* ]]
}
greets_ssh() {
  local line
  line=$(greeting "$1" "$2") || return 1
  [[ $line == SSH-2.0-* ]]
}

# An AMQP-level check: send the AMQP 0-9-1 protocol header; a broker answers with a method frame
# (type 1, channel 0) carrying connection.start (class 10, method 10).
amqp_answers() {
  local hex
  hex=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "AMQP\x00\x00\x09\x01" >&3 && head -c 11 <&3 | od -An -tx1' \
    "$AMQP_HOST" "$AMQP_PORT" 2>/dev/null | tr -d ' \n') || return 1
  [[ $hex =~ ^010000[0-9a-f]{8}000a000a$ ]]
}

redis_answers() { [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

fake_answers() { curl -fsS --max-time 3 "http://127.0.0.1:$FAKE_PORT/_fake/health" >/dev/null 2>&1; }

# A pid file whose process is alive and is the program we expect (guards against pid reuse).
pid_of() {
  local file=$1 expect=$2 pid
  [[ -s $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$expect" || return 1
  printf '%s' "$pid"
}

# wait_for DESCRIPTION PIDFILE EXPECT LOG CMD...: poll CMD until it succeeds, for at most WAIT_SECS;
# stops early if the process behind PIDFILE has died (pass "" to skip that check).
wait_for() {
  local what=$1 pidfile=$2 expect=$3 logfile=$4
  shift 4
  local deadline=$((SECONDS + WAIT_SECS))
  until "$@"; do
    if [[ -n $pidfile ]] && ! pid_of "$pidfile" "$expect" >/dev/null; then
      tail_logs "$logfile"
      die "$what exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      tail_logs "$logfile"
      die "$what not ready after ${WAIT_SECS}s"
    fi
    sleep 0.2
  done
}

# Stop a process we started: TERM, wait (bounded), then KILL.
stop_pidfile() {
  local name=$1 file=$2 expect=$3 pid i
  if pid=$(pid_of "$file" "$expect"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored TERM for 10s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "$name stopped"
  fi
  rm -f "$file"
}

# Start a long-running server detached from this shell (own session, immune to hangups), with its
# output in LOG and its pid in PIDFILE. The server runs in the foreground of its own process so the
# pid recorded is the server's.
start_detached() {
  local pidfile=$1 logfile=$2
  shift 2
  printf '\n===== %s start: %s\n' "$(date -u +%FT%TZ)" "$1" >>"$logfile"
  setsid nohup "$@" >>"$logfile" 2>&1 </dev/null &
  printf '%s\n' "$!" >"$pidfile"
}

# ---------------------------------------------------------------------------------------------
# Packages

install_missing_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}) and not root: run as root"
  log "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# ---------------------------------------------------------------------------------------------
# RabbitMQ

# A worker keeps its delivery unacked for the whole job (it acks only once the job reached a
# terminal outcome), and a large import can outlast the broker's default 30-minute consumer
# timeout, after which the broker closes the channel and redelivers: the job would run twice.
# RabbitMQ 3.10 has no per-queue `x-consumer-timeout`, so the limit is raised broker-wide.
ensure_consumer_timeout() {
  mkdir -p "$(dirname "$RABBITMQ_CONF")"
  touch "$RABBITMQ_CONF"
  if grep -Eq '^[[:space:]]*consumer_timeout[[:space:]]*=' "$RABBITMQ_CONF"; then
    sed -i -E 's/^[[:space:]]*consumer_timeout[[:space:]]*=.*/consumer_timeout = 3600000/' "$RABBITMQ_CONF"
  else
    cat >>"$RABBITMQ_CONF" <<'EOF'

# Added by user-import scripts/stack.sh: workers ack a job only when it has finished, and an import
# may take longer than the default 30 min consumer timeout (the broker would then close the channel
# and redeliver the job). RabbitMQ 3.10 only has this broker-wide setting (no x-consumer-timeout).
consumer_timeout = 3600000
EOF
  fi
}

# Loopback only, for a broker this script starts: the AMQP listener, epmd and the node name
# (the settings this machine's own broker runs with). Keys already set are left as they are.
ensure_loopback_broker() {
  mkdir -p "$(dirname "$RABBITMQ_CONF")" "$(dirname "$RABBITMQ_ENV_CONF")"
  touch "$RABBITMQ_CONF" "$RABBITMQ_ENV_CONF"
  if ! grep -Eq '^[[:space:]]*listeners\.tcp\.' "$RABBITMQ_CONF"; then
    printf '\n# Added by user-import scripts/stack.sh: loopback only.\nlisteners.tcp.local = 127.0.0.1:%s\n' \
      "$AMQP_PORT" >>"$RABBITMQ_CONF"
  fi
  grep -Eq '^[[:space:]]*(export[[:space:]]+)?(RABBITMQ_)?NODENAME=' "$RABBITMQ_ENV_CONF" ||
    printf 'NODENAME=rabbit@localhost\n' >>"$RABBITMQ_ENV_CONF"
  grep -Eq '^[[:space:]]*(export[[:space:]]+)?ERL_EPMD_ADDRESS=' "$RABBITMQ_ENV_CONF" ||
    printf 'ERL_EPMD_ADDRESS=127.0.0.1\n' >>"$RABBITMQ_ENV_CONF"
}

rabbitmq_up() {
  if amqp_answers; then
    if [[ -f $RUN/rabbitmq.started ]]; then
      log "rabbitmq: up on $AMQP_HOST:$AMQP_PORT (started by stack.sh)"
    else
      log "rabbitmq: reusing the broker on $AMQP_HOST:$AMQP_PORT"
    fi
    return 0
  fi
  ensure_consumer_timeout
  ensure_loopback_broker
  log "rabbitmq: starting (rabbitmq-server -detached)"
  rabbitmq-server -detached || die "rabbitmq-server -detached failed"
  touch "$RUN/rabbitmq.started"
  # await_startup fails at once while the Erlang VM is not reachable yet: retry it, bounded.
  local deadline=$((SECONDS + WAIT_SECS + 30))
  until timeout 60 rabbitmqctl -q await_startup >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      tail_logs /var/log/rabbitmq/startup_log /var/log/rabbitmq/startup_err /var/log/rabbitmq/rabbit@*.log
      die "rabbitmq did not finish starting"
    fi
    sleep 1
  done
  wait_for "rabbitmq" "" "" "/var/log/rabbitmq/rabbit@localhost.log" amqp_answers
  log "rabbitmq: up on $AMQP_HOST:$AMQP_PORT"
}

# ---------------------------------------------------------------------------------------------
# Redis

redis_up() {
  if redis_answers; then
    if [[ -f $RUN/redis.started ]]; then
      log "redis: up on 127.0.0.1:$REDIS_PORT (started by stack.sh)"
    else
      log "redis: reusing the server on 127.0.0.1:$REDIS_PORT"
    fi
    return 0
  fi
  mkdir -p /var/lib/redis /var/log/redis
  log "redis: starting"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null || {
    tail_logs /var/log/redis/ci.log
    die "redis-server failed to start"
  }
  touch "$RUN/redis.started"
  wait_for "redis" "" "" /var/log/redis/ci.log redis_answers
  log "redis: up on 127.0.0.1:$REDIS_PORT"
}

# ---------------------------------------------------------------------------------------------
# Certificates, the demo secret and the demo FTP user

# A test CA and a server leaf signed by it. rustls refuses a self-signed CA:TRUE leaf
# (CaUsedAsEndEntity), hence the two-level chain with CA:FALSE + serverAuth + SANs on the leaf.
ensure_certs() {
  mkdir -p "$CERTS"
  if [[ -s $CERTS/ca.pem && -s $CERTS/server.pem && -s $CERTS/server.key ]]; then
    return 0
  fi
  log "certificates: generating a test CA and a server certificate in $CERTS"
  local oslog="$LOGS/openssl.log"
  (
    umask 077
    cd "$CERTS"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 -sha256 \
      -subj "/CN=user-import local test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -new -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
      "subjectAltName=DNS:localhost,IP:127.0.0.1" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
      -days 825 -sha256 -extfile server.ext -out server.pem
    openssl verify -CAfile ca.pem server.pem
    rm -f server.csr server.ext
    chmod 644 ca.pem server.pem
  ) >"$oslog" 2>&1 || {
    tail_logs "$oslog"
    rm -f "$CERTS/ca.pem" "$CERTS/server.pem" "$CERTS/server.key"
    die "certificate generation failed"
  }
}

# ensure_secret TENANT: the tenant's API key in the secrets folder, made once.
ensure_secret() {
  local tenant=$1
  mkdir -p "$SECRETS"
  chmod 700 "$SECRETS"
  if [[ ! -s $SECRETS/$tenant ]]; then
    (
      umask 077
      openssl rand -hex 16 >"$SECRETS/$tenant.tmp"
      mv "$SECRETS/$tenant.tmp" "$SECRETS/$tenant"
    )
    log "secrets: generated the $tenant key in $SECRETS/$tenant"
  fi
  [[ $(<"$SECRETS/$tenant") =~ ^[0-9a-f]{32}$ ]] || die "$SECRETS/$tenant does not hold 32 hex characters"
}
ensure_demo_secret() { ensure_secret "$DEMO_USER"; }

ensure_demo_user() {
  mkdir -p "$FTP_ROOT"
  chmod 755 "$FTP_ROOT"
  if ! id -u "$DEMO_USER" >/dev/null 2>&1; then
    # A login shell listed in /etc/shells: vsftpd's PAM stack (pam_shells) refuses others.
    # No -m: a bare home (no /etc/skel dotfiles), made just below.
    useradd -M -d "$DEMO_HOME" -s /bin/bash -c "user-import demo tenant (scripts/stack.sh)" "$DEMO_USER"
    log "ftp: created the local user $DEMO_USER (home $DEMO_HOME)"
  fi
  printf '%s:%s\n' "$DEMO_USER" "$(<"$SECRETS/demo")" | chpasswd
  install -d -o "$DEMO_USER" -g "$DEMO_USER" -m 755 "$DEMO_HOME"
  local d
  for d in uploads tmp log reports archive; do
    install -d -o "$DEMO_USER" -g "$DEMO_USER" -m 755 "$DEMO_HOME/$d"
  done
}

# ---------------------------------------------------------------------------------------------
# vsftpd (explicit FTPS)

write_vsftpd_conf() {
  # vsftpd exits 2 without a word on a bad line: keep to the options of the verified recipe.
  cat <<EOF
# Generated by scripts/stack.sh; edits are overwritten.
listen=YES
listen_address=127.0.0.1
listen_port=$FTPS_PORT
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
chroot_local_user=YES
allow_writeable_chroot=YES
secure_chroot_dir=/var/run/vsftpd/empty
pam_service_name=vsftpd
pasv_enable=YES
pasv_min_port=$PASV_MIN
pasv_max_port=$PASV_MAX
pasv_address=127.0.0.1
ssl_enable=YES
rsa_cert_file=$CERTS/server.pem
rsa_private_key_file=$CERTS/server.key
force_local_logins_ssl=YES
force_local_data_ssl=YES
require_ssl_reuse=YES
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file=$LOGS/vsftpd.log
EOF
}

# Log in as demo over TLS, verifying the server certificate against our CA, and list the home.
ftps_login_works() {
  local listing
  listing=$(printf 'user = "%s:%s"\n' "$DEMO_USER" "$(<"$SECRETS/demo")" |
    curl -sS --max-time 10 --ssl-reqd --cacert "$CERTS/ca.pem" -K - "ftp://127.0.0.1:$FTPS_PORT/" 2>>"$LOGS/vsftpd.check") ||
    return 1
  grep -q uploads <<<"$listing"
}

vsftpd_up() {
  ensure_certs
  ensure_demo_secret
  ensure_demo_user
  mkdir -p /var/run/vsftpd/empty
  local conf="$STATE/vsftpd.conf" pidfile="$RUN/vsftpd.pid" out="$LOGS/vsftpd.out"
  write_vsftpd_conf >"$conf.new"
  local running=0
  if pid_of "$pidfile" vsftpd >/dev/null; then
    if cmp -s "$conf.new" "$conf"; then
      running=1
    else
      log "vsftpd: configuration changed, restarting"
      stop_pidfile vsftpd "$pidfile" vsftpd
    fi
  fi
  mv "$conf.new" "$conf"
  if ((running)); then
    log "vsftpd: already running on 127.0.0.1:$FTPS_PORT"
  else
    tcp_open 127.0.0.1 "$FTPS_PORT" && die "port 127.0.0.1:$FTPS_PORT is taken by another process (set UI_FTPS_PORT)"
    log "vsftpd: starting on 127.0.0.1:$FTPS_PORT (passive $PASV_MIN-$PASV_MAX)"
    start_detached "$pidfile" "$out" vsftpd "$conf"
  fi
  wait_for "vsftpd" "$pidfile" vsftpd "$out" greets_220 127.0.0.1 "$FTPS_PORT"
  : >"$LOGS/vsftpd.check"
  if ! ftps_login_works; then
    tail_logs "$LOGS/vsftpd.check" "$LOGS/vsftpd.log" "$out"
    die "vsftpd answers but an FTPS login and listing as $DEMO_USER failed"
  fi
  log "vsftpd: up on 127.0.0.1:$FTPS_PORT (TLS verified, $DEMO_USER can log in and list)"
}

# ---------------------------------------------------------------------------------------------
# sshd (SFTP only), as the test harness runs it: its own host key and configuration, a loopback
# port, password logins, the demo user chrooted to internal-sftp. The package's own service (port
# 22, /etc/ssh) is not touched.

ensure_sftp_host_key() {
  mkdir -p "$SSH_DIR"
  chmod 700 "$SSH_DIR"
  if [[ ! -s $SSH_DIR/host_ed25519 || ! -s $SSH_DIR/host_ed25519.pub ]]; then
    rm -f "$SSH_DIR/host_ed25519" "$SSH_DIR/host_ed25519.pub"
    ssh-keygen -q -t ed25519 -N "" -C "user-import local sftp" -f "$SSH_DIR/host_ed25519" ||
      die "ssh-keygen failed"
    log "sshd: generated the host key in $SSH_DIR/host_ed25519"
  fi
}

# The host key as the registry pins it: `ssh-ed25519 AAAA…` (without the comment).
sftp_host_key() { cut -d' ' -f1,2 "$SSH_DIR/host_ed25519.pub"; }
# Its SHA256 fingerprint, as ssh and the worker's errors show it.
sftp_fingerprint() { ssh-keygen -l -E sha256 -f "$SSH_DIR/host_ed25519.pub" | cut -d' ' -f2; }

ensure_sftp_user() {
  ensure_secret "$SFTP_USER"
  install -d -o root -g root -m 755 "$SFTP_JAIL" "$SFTP_JAIL/$SFTP_USER"
  if ! id -u "$SFTP_USER" >/dev/null 2>&1; then
    useradd -M -d "$SFTP_JAIL/$SFTP_USER" -s /bin/bash -c "user-import SFTP demo tenant (scripts/stack.sh)" "$SFTP_USER"
    log "sftp: created the local user $SFTP_USER (chroot $SFTP_JAIL/$SFTP_USER)"
  fi
  printf '%s:%s\n' "$SFTP_USER" "$(<"$SECRETS/$SFTP_USER")" | chpasswd
  install -d -o "$SFTP_USER" -g "$SFTP_USER" -m 755 "$SFTP_HOME"
  local d
  for d in uploads tmp log reports; do
    install -d -o "$SFTP_USER" -g "$SFTP_USER" -m 755 "$SFTP_HOME/$d"
  done
}

write_sshd_conf() {
  cat <<EOF
# Generated by scripts/stack.sh; edits are overwritten.
ListenAddress 127.0.0.1
Port $SFTP_PORT
HostKey $SSH_DIR/host_ed25519
PidFile $RUN/sshd.own.pid
UsePAM no
PermitRootLogin no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile $SSH_DIR/authorized/%u
AllowUsers $SFTP_USER
LogLevel VERBOSE
Subsystem sftp internal-sftp
Match User $SFTP_USER
  ChrootDirectory $SFTP_JAIL/%u
  ForceCommand internal-sftp -d /home
  AllowTcpForwarding no
  X11Forwarding no
EOF
}

# Log in as the SFTP demo user with the pinned host key and list the account's root.
sftp_login_works() {
  local listing
  listing=$(printf 'user = "%s:%s"\n' "$SFTP_USER" "$(<"$SECRETS/$SFTP_USER")" |
    curl -sS --max-time 10 --hostpubsha256 "$(sftp_fingerprint | sed 's/^SHA256://')" -K - \
      "sftp://127.0.0.1:$SFTP_PORT/home/" 2>>"$LOGS/sshd.check") || return 1
  grep -q uploads <<<"$listing"
}

sshd_up() {
  [[ -x /usr/sbin/sshd ]] || die "/usr/sbin/sshd is missing (openssh-server)"
  ensure_sftp_host_key
  ensure_sftp_user
  # sshd's privilege separation folder.
  install -d -o root -g root -m 755 /run/sshd
  local conf="$STATE/sshd_config" pidfile="$RUN/sshd.pid" out="$LOGS/sshd.log"
  write_sshd_conf >"$conf.new"
  /usr/sbin/sshd -t -f "$conf.new" 2>"$LOGS/sshd.check" || {
    tail_logs "$LOGS/sshd.check"
    die "sshd refuses its configuration"
  }
  local running=0
  if pid_of "$pidfile" "$conf" >/dev/null; then
    if cmp -s "$conf.new" "$conf"; then
      running=1
    else
      log "sshd: configuration changed, restarting"
      stop_pidfile sshd "$pidfile" "$conf"
    fi
  fi
  mv "$conf.new" "$conf"
  if ((running)); then
    log "sshd: already running on 127.0.0.1:$SFTP_PORT"
  else
    tcp_open 127.0.0.1 "$SFTP_PORT" && die "port 127.0.0.1:$SFTP_PORT is taken by another process (set UI_SFTP_PORT)"
    log "sshd: starting on 127.0.0.1:$SFTP_PORT (SFTP only)"
    start_detached "$pidfile" "$out" /usr/sbin/sshd -D -e -f "$conf"
  fi
  wait_for "sshd" "$pidfile" "$conf" "$out" greets_ssh 127.0.0.1 "$SFTP_PORT"
  : >"$LOGS/sshd.check"
  if ! sftp_login_works; then
    tail_logs "$LOGS/sshd.check" "$out"
    die "sshd answers but an SFTP login and listing as $SFTP_USER failed"
  fi
  log "sshd: up on 127.0.0.1:$SFTP_PORT (host key $(sftp_fingerprint), $SFTP_USER can log in and list)"
}

# The demo registry: the example registry, with the SFTP demo tenant and its pinned host key.
write_registry() {
  {
    # The example's demo tenant, pointed at this stack's ports.
    sed -e "s/^ftps_port = 2121\b/ftps_port = $FTPS_PORT/" -e "s#http://127.0.0.1:8089#http://127.0.0.1:$FAKE_PORT#" \
      "$ROOT/config/tenants.example.toml"
    cat <<EOF

# Added by scripts/stack.sh: the SFTP demo tenant on the stack's sshd, its host key pinned.
[[tenant]]
name = "$SFTP_USER"
region = "eu"
portal_domain = "$SFTP_DOMAIN"
api_base_url = "http://127.0.0.1:$FAKE_PORT"
transport = "sftp"
ftps_host = "127.0.0.1"
sftp_port = $SFTP_PORT
sftp_host_key = "$(sftp_host_key)"
admin = { username = "demo-sftp.admin", email = "admin@demo-sftp.example.com" }
files = { settle = "5s", archive_retention_days = 30 }
EOF
  } >"$REGISTRY.new"
  mv "$REGISTRY.new" "$REGISTRY"
  log "registry: $REGISTRY (demo over FTPS, $SFTP_USER over SFTP)"
}

# ---------------------------------------------------------------------------------------------
# SMTP sink

smtp_up() {
  local pidfile="$RUN/smtp.pid" out="$LOGS/smtp.log"
  "$PYTHON" -c 'import aiosmtpd' 2>/dev/null || die "$PYTHON cannot import aiosmtpd (python3-aiosmtpd)"
  # All three Maildir folders: Python's mailbox.Maildir only creates them when the top folder
  # itself is missing, and delivery fails ("500 ... No such file") without tmp/.
  mkdir -p "$MAILDIR/tmp" "$MAILDIR/new" "$MAILDIR/cur"
  if pid_of "$pidfile" aiosmtpd >/dev/null && grep -q -- "127.0.0.1:$SMTP_PORT" "/proc/$(<"$pidfile")/cmdline"; then
    wait_for "smtp sink" "$pidfile" aiosmtpd "$out" greets_220 127.0.0.1 "$SMTP_PORT"
    log "smtp sink: already up on 127.0.0.1:$SMTP_PORT"
    return 0
  fi
  stop_pidfile "smtp sink" "$pidfile" aiosmtpd
  tcp_open 127.0.0.1 "$SMTP_PORT" && die "port 127.0.0.1:$SMTP_PORT is taken by another process (set UI_SMTP_PORT)"
  log "smtp sink: starting on 127.0.0.1:$SMTP_PORT (Maildir $MAILDIR)"
  start_detached "$pidfile" "$out" "$PYTHON" -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" \
    -c aiosmtpd.handlers.Mailbox "$MAILDIR"
  wait_for "smtp sink" "$pidfile" aiosmtpd "$out" greets_220 127.0.0.1 "$SMTP_PORT"
  log "smtp sink: up on 127.0.0.1:$SMTP_PORT"
}

# ---------------------------------------------------------------------------------------------
# The platform fake

cargo_target_dir() {
  (cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null) |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

fake_up() {
  local pidfile="$RUN/fake.pid" out="$LOGS/fake.log" stampfile="$RUN/fake.stamp" bin stamp
  command -v cargo >/dev/null || die "cargo is not on PATH: needed to build platform-fake (or pass --no-fake)"
  log "platform fake: building (cargo build -p platform-fake)"
  (cd "$ROOT" && cargo build -q -p platform-fake) || die "cargo build -p platform-fake failed"
  bin="$(cargo_target_dir)/debug/platform-fake"
  [[ -x $bin ]] || die "no binary at $bin after the build"
  # Restart when the binary was rebuilt or the port changed.
  stamp="$(stat -c %Y "$bin") $FAKE_PORT $SFTP_DOMAIN"
  if pid_of "$pidfile" platform-fake >/dev/null; then
    if [[ -f $stampfile && $(<"$stampfile") == "$stamp" ]]; then
      wait_for "platform fake" "$pidfile" platform-fake "$out" fake_answers
      log "platform fake: already up on http://127.0.0.1:$FAKE_PORT"
      return 0
    fi
    log "platform fake: binary or port changed, restarting"
  fi
  stop_pidfile "platform fake" "$pidfile" platform-fake
  tcp_open 127.0.0.1 "$FAKE_PORT" && die "port 127.0.0.1:$FAKE_PORT is taken by another process (set UI_FAKE_PORT)"
  log "platform fake: starting on 127.0.0.1:$FAKE_PORT"
  start_detached "$pidfile" "$out" "$bin" --listen "127.0.0.1:$FAKE_PORT" \
    --tenant "$DEMO_DOMAIN=$(<"$SECRETS/demo")" --tenant "$SFTP_DOMAIN=$(<"$SECRETS/$SFTP_USER")"
  printf '%s\n' "$stamp" >"$stampfile"
  wait_for "platform fake" "$pidfile" platform-fake "$out" fake_answers
  log "platform fake: up on http://127.0.0.1:$FAKE_PORT (tenants $DEMO_DOMAIN, $SFTP_DOMAIN)"
}

# The demo tenant's nominated admin (config/tenants.example.toml), which `worker doctor` looks up.
seed_demo_admin() {
  local url="http://127.0.0.1:$FAKE_PORT/_fake/tenants/$DEMO_DOMAIN/users/$DEMO_ADMIN"
  curl -fsS --max-time 3 "$url" >/dev/null 2>&1 && return 0
  curl -fsS --max-time 3 -X PUT -H 'content-type: application/json' \
    -d '{"profile":{"forename":"Demo","surname":"Admin"},"state":"Activated"}' "$url" >/dev/null ||
    die "platform fake: cannot create the demo admin $DEMO_ADMIN"
  log "platform fake: created the demo tenant's admin $DEMO_ADMIN"
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_up() {
  local with_fake=1 arg
  for arg in "$@"; do
    case $arg in
    --no-fake) with_fake=0 ;;
    *) die "unknown option for up: $arg" ;;
    esac
  done
  [[ $EUID -eq 0 ]] || die "run as root (apt-get, useradd, vsftpd and sshd need it)"
  load_ports record
  mkdir -p "$STATE" "$LOGS" "$RUN"
  install_missing_packages
  # ProFTPD for the test suite, unpacked beside vsftpd (their packages conflict).
  "$ROOT/scripts/proftpd-prepare.sh" >/dev/null
  rabbitmq_up
  redis_up
  vsftpd_up
  sshd_up
  write_registry
  smtp_up
  if ((with_fake)); then
    fake_up
    seed_demo_admin
  else
    log "platform fake: skipped (--no-fake)"
  fi
  log "ready; eval \"\$(scripts/stack.sh env)\" to use it"
}

# status line: NAME STATE ADDRESS NOTE
status_line() { printf '%-14s %-5s %-32s %s\n' "$@"; }

owner_note() {
  if [[ -f $RUN/$1.started ]]; then echo "started by stack.sh"; else echo "reused (not managed)"; fi
}

cmd_status() {
  load_ports read
  local down=0 state
  if amqp_answers; then state=up; else state=down down=1; fi
  status_line rabbitmq "$state" "amqp://$AMQP_HOST:$AMQP_PORT" "$(owner_note rabbitmq)"
  if redis_answers; then state=up; else state=down down=1; fi
  status_line redis "$state" "redis://127.0.0.1:$REDIS_PORT" "$(owner_note redis)"
  if pid_of "$RUN/vsftpd.pid" vsftpd >/dev/null && greets_220 127.0.0.1 "$FTPS_PORT"; then state=up; else state=down down=1; fi
  status_line vsftpd "$state" "ftp://127.0.0.1:$FTPS_PORT" "explicit FTPS, passive $PASV_MIN-$PASV_MAX, user $DEMO_USER"
  if pid_of "$RUN/sshd.pid" "$STATE/sshd_config" >/dev/null && greets_ssh 127.0.0.1 "$SFTP_PORT"; then state=up; else state=down down=1; fi
  status_line sshd "$state" "sftp://127.0.0.1:$SFTP_PORT" "SFTP only, user $SFTP_USER, host key $(sftp_fingerprint 2>/dev/null || echo '?')"
  if pid_of "$RUN/smtp.pid" aiosmtpd >/dev/null && greets_220 127.0.0.1 "$SMTP_PORT"; then state=up; else state=down down=1; fi
  status_line smtp-sink "$state" "smtp://127.0.0.1:$SMTP_PORT" "Maildir $MAILDIR"
  if pid_of "$RUN/fake.pid" platform-fake >/dev/null && fake_answers; then state=up; else state=down down=1; fi
  status_line platform-fake "$state" "http://127.0.0.1:$FAKE_PORT" "tenants $DEMO_DOMAIN, $SFTP_DOMAIN"
  return "$down"
}

cmd_stop() {
  load_ports read
  stop_pidfile "platform fake" "$RUN/fake.pid" platform-fake
  rm -f "$RUN/fake.stamp"
  stop_pidfile "smtp sink" "$RUN/smtp.pid" aiosmtpd
  stop_pidfile vsftpd "$RUN/vsftpd.pid" vsftpd
  stop_pidfile sshd "$RUN/sshd.pid" "$STATE/sshd_config"
  rm -f "$RUN/sshd.own.pid"
  if [[ -f $RUN/redis.started ]]; then
    if redis_answers; then
      timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
      log "redis stopped"
    fi
    rm -f "$RUN/redis.started"
  fi
  if [[ -f $RUN/rabbitmq.started ]]; then
    if amqp_answers; then
      timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 || log "rabbitmqctl stop failed"
      log "rabbitmq stopped"
    fi
    rm -f "$RUN/rabbitmq.started"
  fi
}

cmd_env() {
  load_ports read
  cat <<EOF
export UI_AMQP_URL='amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/%2f'
export UI_REDIS_URL='redis://127.0.0.1:$REDIS_PORT/'
export UI_TEST_AMQP_URL='amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/%2f'
export UI_TEST_REDIS_URL='redis://127.0.0.1:$REDIS_PORT/'
export UI_FTPS_HOST='127.0.0.1'
export UI_FTPS_PORT='$FTPS_PORT'
export UI_PASV_MIN='$PASV_MIN'
export UI_PASV_MAX='$PASV_MAX'
export UI_CA_FILE='$CERTS/ca.pem'
export UI_DEMO_USER='$DEMO_USER'
export UI_DEMO_DOMAIN='$DEMO_DOMAIN'
export UI_DEMO_HOME='$DEMO_HOME'
export UI_DEMO_KEY_FILE='$SECRETS/demo'
export UI_SMTP_HOST='127.0.0.1'
export UI_SMTP_PORT='$SMTP_PORT'
export UI_MAILDIR='$MAILDIR'
export UI_FAKE_PORT='$FAKE_PORT'
export UI_FAKE_URL='http://127.0.0.1:$FAKE_PORT'
export UI_SFTP_PORT='$SFTP_PORT'
export UI_SFTP_USER='$SFTP_USER'
export UI_SFTP_DOMAIN='$SFTP_DOMAIN'
export UI_SFTP_HOME='$SFTP_HOME'
export UI_SFTP_KEY_FILE='$SECRETS/$SFTP_USER'
export UI_SFTP_HOST_KEY_FILE='$SSH_DIR/host_ed25519.pub'
export UI_REGISTRY_FILE='$REGISTRY'
EOF
}

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
  up) cmd_up "$@" ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  install)
    [[ $EUID -eq 0 ]] || die "run as root (apt-get needs it)"
    install_missing_packages
    "$ROOT/scripts/proftpd-prepare.sh" >/dev/null
    ;;
  *) usage ;;
  esac
}

main "$@"
