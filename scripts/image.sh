#!/usr/bin/env bash
# scripts/image.sh — the fleet's container image without a container engine, then a smoke run.
#
#   scripts/image.sh [build]        musl build on the host, image with buildah, smoke run (default)
#   scripts/image.sh smoke          smoke-run the image built last
#   scripts/image.sh rootfs DEST BIN_DIR
#                                   lay out the image's file system (used by the Dockerfile too)
#
# The same image as the Dockerfile: the static (musl) binaries are built here with cargo instead
# of in a builder stage, and the Dockerfile's final stage (from `FROM scratch` on) is built with
# buildah (vfs storage, chroot isolation) with only its COPY source changed. Nothing is pulled:
# the base is `scratch`.
#
# The musl build's target dir is $IMAGE_CARGO_TARGET_DIR, default /var/cache/user-import/image-target
# ($USER_IMPORT_CACHE_DIR/image-target; USER_IMPORT_CACHE_DIR=none: the clone's target dir):
# outside the clone, reused by every run on the machine.
#
# Output (under target/, git-ignored): target/image/oci (OCI layout, tag user-import:dev) and
# target/image/user-import.oci.tar (oci-archive), e.g. for
#   skopeo copy oci-archive:target/image/user-import.oci.tar docker://<registry>/fleet:<version>
#
# Smoke run (runc, the OCI runtime Kubernetes nodes use, on the image unpacked by umoci), with
# the pod's restrictions: read-only root, a tmpfs /tmp, no capabilities, the image's USER:
#   - the image config's user is numeric and not 0;
#   - `worker --version` and `scheduler --version` run;
#   - `worker check-config` and `scheduler check-config` accept the eu overlay's settings, tenant
#     registry and region variables, mounted read-only where the Deployments mount them;
#   - `worker run` starts; its process's real and effective uid (read from /proc) are not 0 and
#     are the image's user; /healthz answers, /readyz says 503 (no broker); SIGTERM makes it exit
#     0 within 30 s (worker.drain_timeout is 25 s).
#
# Installs what is missing: Debian's buildah, umoci, skopeo, runc, musl-tools, jq, curl,
# util-linux (nsenter), iproute2, binutils; rustup's x86_64-unknown-linux-musl target. Needs root (as CI and the project's machines run).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

TARGET=x86_64-unknown-linux-musl
IMAGE="user-import:dev"
UID_GID=65532   # the Dockerfile's USER

# The image's file system. Keep it in step with the Dockerfile's final stage comments.
rootfs() {
  local dest=$1 bins=$2
  mkdir -p "$dest/usr/local/bin" "$dest/etc/ssl/certs" "$dest/tmp"
  install -m 0755 "$bins/worker" "$bins/scheduler" "$dest/usr/local/bin/"
  # The release profile keeps line tables (debug = "line-tables-only"): ~80-95 MB per static
  # binary. The image keeps the symbols (function names in backtraces) and drops the rest.
  strip --strip-debug "$dest/usr/local/bin/worker" "$dest/usr/local/bin/scheduler"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$dest/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/tmp:/sbin/nologin\n' \
    "$UID_GID" "$UID_GID" >"$dest/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$UID_GID" >"$dest/etc/group"
  chmod 1777 "$dest/tmp"
}

if [[ ${1:-} == rootfs ]]; then
  [[ $# -eq 3 ]] || { echo "usage: $0 rootfs DEST BIN_DIR" >&2; exit 2; }
  rootfs "$2" "$3"
  exit 0
fi

cd "$ROOT"
# The image's output goes where the rest of the build goes (CARGO_TARGET_DIR is honoured, as cargo
# does). The musl release build has a target dir of its own OUTSIDE the clone, kept between runs on
# this machine: a fresh clone's CI run then recompiles only what changed (cargo's fingerprints decide
# what is stale, as in any target dir; its lock serializes two runs that meet there). Cold, the
# dependencies take ~10 min on 2 cores; warm, the three workspace crates at most.
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET_DIR/image
CACHE_DIR=${USER_IMPORT_CACHE_DIR:-/var/cache/user-import}
if [[ $CACHE_DIR == none ]]; then
  MUSL_TARGET_DIR=${IMAGE_CARGO_TARGET_DIR:-$TARGET_DIR}
else
  MUSL_TARGET_DIR=${IMAGE_CARGO_TARGET_DIR:-$CACHE_DIR/image-target}
fi
STORAGE=(--root "$OUT/storage" --runroot "$OUT/run" --storage-driver vfs)
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "image.sh: buildah (vfs/chroot) and runc need root here" >&2
    exit 2
  fi
}

install_tools() {
  local missing=()
  for tool in buildah:buildah umoci:umoci skopeo:skopeo runc:runc musl-gcc:musl-tools jq:jq \
              curl:curl nsenter:util-linux ip:iproute2 readelf:binutils strip:binutils; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
  done
  if ((${#missing[@]})); then
    echo "== installing ${missing[*]} (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [[ ! -f /etc/ssl/certs/ca-certificates.crt ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates >/dev/null
  fi
  if ! rustup target list --installed | grep -qx "$TARGET"; then
    echo "== rustup target add $TARGET"
    rustup target add "$TARGET"
  fi
}

build() {
  local t0 t1 bins ctx
  t0=$(now)
  echo "== cargo build --release --target $TARGET (static musl binaries, target dir $MUSL_TARGET_DIR)"
  mkdir -p "$MUSL_TARGET_DIR"
  # The release profile with one change: no debug info. The image strips it anyway (`rootfs`:
  # strip --strip-debug keeps the symbols), so the image's binaries are the same without it, and
  # rustc and the linker are spared writing ~80 MB of line tables per binary. Only the two
  # binaries' crates are built (not the tests, benches or the platform fake).
  CARGO_TARGET_DIR=$MUSL_TARGET_DIR CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo build --release --locked --target "$TARGET" -p worker -p scheduler
  bins=$MUSL_TARGET_DIR/$TARGET/release
  for b in worker scheduler; do
    if ! file_is_static "$bins/$b"; then
      echo "FAIL: $bins/$b is not statically linked" >&2
      exit 1
    fi
  done
  echo "   cargo: $(elapsed "$t0") s"

  t1=$(now)
  ctx=$OUT/context
  rm -rf "$ctx"
  mkdir -p "$ctx"
  rootfs "$ctx/rootfs" "$bins"
  # The Dockerfile's final stage, with the builder stage's output replaced by the host's.
  sed -n '/^FROM scratch/,$p' Dockerfile >"$ctx/Containerfile"
  sed -i 's|^COPY --from=build /rootfs/ /$|COPY rootfs/ /|' "$ctx/Containerfile"
  if ! grep -qx 'COPY rootfs/ /' "$ctx/Containerfile" || grep -q -- '--from=' "$ctx/Containerfile" \
    || grep -qE '^RUN' "$ctx/Containerfile"; then
    echo "FAIL: the Dockerfile's final stage is not 'FROM scratch' + 'COPY --from=build /rootfs/ /'" \
      "without RUN: update scripts/image.sh with it" >&2
    exit 1
  fi
  echo "== buildah bud (vfs, chroot) of the Dockerfile's final stage"
  buildah "${STORAGE[@]}" bud --quiet --isolation chroot --layers=false --timestamp 0 \
    -f "$ctx/Containerfile" -t "$IMAGE" "$ctx" >/dev/null
  rm -rf "$OUT/oci" "$OUT/user-import.oci.tar"
  buildah "${STORAGE[@]}" push --quiet "$IMAGE" "oci:$OUT/oci:$IMAGE"
  buildah "${STORAGE[@]}" push --quiet "$IMAGE" "oci-archive:$OUT/user-import.oci.tar:$IMAGE"
  echo "   image: $(elapsed "$t1") s; $(du -h "$OUT/user-import.oci.tar" | cut -f1) oci-archive at" \
    "${OUT#"$ROOT"/}/user-import.oci.tar"
}

file_is_static() {
  # No program interpreter = no dynamic loader needed (static-pie included).
  ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}

# --- smoke run ----------------------------------------------------------------------------

BUNDLE=$OUT/bundle
CFG=$OUT/smoke-config

unpack() {
  rm -rf "$BUNDLE"
  umoci unpack --image "$OUT/oci:$IMAGE" "$BUNDLE" >/dev/null
  # The pod's restrictions: read-only root, a tmpfs /tmp (the emptyDir), no capabilities, no new
  # privileges; the process user stays the one umoci took from the image's USER.
  jq --arg cfg "$CFG" '
      $env_file[0] as $env
    | .root.readonly = true
    | .process.terminal = false
    | .process.noNewPrivileges = true
    | .process.capabilities = {bounding: [], effective: [], inheritable: [], permitted: [], ambient: []}
    | .mounts += [
        {destination: "/tmp", type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev", "mode=1777", "size=64m"]},
        {destination: "/etc/user-import/settings", type: "bind", source: ($cfg + "/settings"), options: ["rbind", "ro"]},
        {destination: "/etc/user-import/tenants", type: "bind", source: ($cfg + "/tenants"), options: ["rbind", "ro"]},
        {destination: "/var/run/secrets/user-import/tenant-keys", type: "bind", source: ($cfg + "/tenant-keys"), options: ["rbind", "ro"]}
      ]
    | .process.env += $env + ["USER_IMPORT_CONFIG=/etc/user-import/settings/settings.toml",
                       "USER_IMPORT__AMQP__URL=amqp://nobody:nothing@127.0.0.1:1/%2f",
                       "USER_IMPORT__REDIS__URL=redis://127.0.0.1:1/"]
    ' --slurpfile env_file "$CFG/env.json" "$BUNDLE/config.json" >"$BUNDLE/config.json.new"
  mv "$BUNDLE/config.json.new" "$BUNDLE/config.json"
}

# What the eu overlay mounts and sets: the files its ConfigMaps are generated from (base settings,
# the overlay's tenant registry, its region.env as variables) and a tenant key file.
smoke_config() {
  rm -rf "$CFG"
  mkdir -p "$CFG/settings" "$CFG/tenants" "$CFG/tenant-keys"
  cp deploy/base/settings.toml "$CFG/settings/settings.toml"
  cp deploy/overlays/eu/tenants.toml "$CFG/tenants/tenants.toml"
  echo "smoke-test-key" >"$CFG/tenant-keys/acme"
  chmod -R a+rX "$CFG"
  grep -E '^[A-Z_]+=' deploy/overlays/eu/region.env | jq -R . | jq -s . >"$CFG/env.json"
}

run_in_image() { # name, then the process args; prints stdout (stderr: $OUT/smoke-stderr.log)
  local name=$1
  shift
  jq --argjson args "$(printf '%s\n' "$@" | jq -R . | jq -s .)" '.process.args = $args' \
    "$BUNDLE/config.json" >"$BUNDLE/config.json.run"
  cp "$BUNDLE/config.json" "$BUNDLE/config.json.base"
  mv "$BUNDLE/config.json.run" "$BUNDLE/config.json"
  local rc=0
  runc run --bundle "$BUNDLE" "user-import-smoke-$name-$$" </dev/null 2>"$OUT/smoke-stderr.log" || rc=$?
  ((rc == 0)) || cat "$OUT/smoke-stderr.log" >&2
  mv "$BUNDLE/config.json.base" "$BUNDLE/config.json"
  return $rc
}

smoke() {
  local t0 user out id pid uids status
  t0=$(now)
  [[ -d $OUT/oci ]] || { echo "no image at $OUT/oci: run scripts/image.sh build" >&2; exit 1; }
  smoke_config
  unpack
  echo "== smoke run (runc; read-only root, tmpfs /tmp, no capabilities)"

  user=$(skopeo inspect --config "oci:$OUT/oci:$IMAGE" | jq -r '.config.User')
  [[ $user =~ ^[0-9]+(:[0-9]+)?$ ]] || { echo "FAIL: image USER '$user' is not numeric" >&2; exit 1; }
  [[ ${user%%:*} != 0 ]] || { echo "FAIL: image USER is root" >&2; exit 1; }
  [[ $(jq -r '.process.user.uid' "$BUNDLE/config.json") == "${user%%:*}" ]] ||
    { echo "FAIL: the runtime config does not run as the image's USER" >&2; exit 1; }
  echo "   image config: User=$user"

  for bin in worker scheduler; do
    out=$(run_in_image "$bin-version" "/usr/local/bin/$bin" --version) ||
      { echo "FAIL: $bin --version: $out" >&2; exit 1; }
    echo "   $bin --version: $out"
    out=$(run_in_image "$bin-check" "/usr/local/bin/$bin" check-config) ||
      { echo "FAIL: $bin check-config with the eu overlay's settings: $out" >&2; exit 1; }
    echo "   $bin check-config: $out"
  done

  # worker run in the background: the uid of the real process, health, then a SIGTERM drain.
  id=user-import-smoke-run-$$
  jq '.process.args = ["/usr/local/bin/worker", "run"]' "$BUNDLE/config.json" >"$BUNDLE/config.json.run"
  cp "$BUNDLE/config.json" "$BUNDLE/config.json.base"
  mv "$BUNDLE/config.json.run" "$BUNDLE/config.json"
  runc run --bundle "$BUNDLE" "$id" </dev/null >"$OUT/smoke-run.log" 2>&1 &
  local runc_pid=$!
  trap 'runc kill "'"$id"'" KILL >/dev/null 2>&1 || true; runc delete --force "'"$id"'" >/dev/null 2>&1 || true' EXIT
  pid=""
  for _ in $(seq 1 100); do
    pid=$(runc state "$id" 2>/dev/null | jq -r 'select(.status == "running") | .pid' || true)
    [[ -n $pid && $pid != 0 ]] && break
    sleep 0.1
  done
  mv "$BUNDLE/config.json.base" "$BUNDLE/config.json"
  [[ -n $pid ]] || { echo "FAIL: worker run did not start; log:" >&2; cat "$OUT/smoke-run.log" >&2; exit 1; }
  uids=$(awk '/^Uid:/ { print $2, $3 }' "/proc/$pid/status")
  echo "   worker run: pid $pid on the host, uid (real effective) $uids"
  if [[ $uids != "${user%%:*} ${user%%:*}" ]]; then
    echo "FAIL: the worker runs as uid $uids, not ${user%%:*}" >&2
    exit 1
  fi
  # The container has its own network namespace; bring its loopback up to reach /healthz.
  nsenter --target "$pid" --net ip link set lo up
  local ok=""
  for _ in $(seq 1 50); do
    if nsenter --target "$pid" --net curl -fsS --max-time 1 http://127.0.0.1:9090/healthz >/dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 0.1
  done
  [[ -n $ok ]] || { echo "FAIL: /healthz did not answer; log:" >&2; cat "$OUT/smoke-run.log" >&2; exit 1; }
  status=$(nsenter --target "$pid" --net curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9090/readyz || true)
  echo "   /healthz 200; /readyz $status (no broker here: 503 expected);" \
    "/metrics $(nsenter --target "$pid" --net curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9090/metrics || true)"
  [[ $status == 503 ]] || { echo "FAIL: /readyz $status without a broker" >&2; exit 1; }
  local t_term rc=0
  t_term=$(now)
  runc kill "$id" TERM
  for _ in $(seq 1 300); do
    kill -0 "$runc_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$runc_pid" 2>/dev/null; then
    echo "FAIL: worker still running 30 s after SIGTERM; log:" >&2
    cat "$OUT/smoke-run.log" >&2
    exit 1
  fi
  wait "$runc_pid" || rc=$?
  trap - EXIT
  runc delete --force "$id" >/dev/null 2>&1 || true
  [[ $rc == 0 ]] || { echo "FAIL: worker exited $rc after SIGTERM; log:" >&2; cat "$OUT/smoke-run.log" >&2; exit 1; }
  echo "   SIGTERM -> exit 0 in $(elapsed "$t_term") s (the worker handles it as PID 1)"
  echo "   smoke run: $(elapsed "$t0") s"
}

need_root
case ${1:-build} in
  build)
    T0=$(now)
    install_tools
    build
    smoke
    echo "image.sh: built and smoke-tested in $(elapsed "$T0") s"
    ;;
  smoke)
    install_tools
    smoke
    ;;
  *)
    echo "usage: $0 [build|smoke|rootfs DEST BIN_DIR]" >&2
    exit 2
    ;;
esac
