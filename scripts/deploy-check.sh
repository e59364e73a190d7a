#!/usr/bin/env bash
# scripts/deploy-check.sh — offline checks of the Kubernetes manifests (deploy/) and the Dockerfile,
# then a self-check proving the checks reject broken manifests. No cluster, no engine, no network
# but the package registries (for the first install of the tools).
#
#   1. render every overlay (deploy/overlays/*) with `kubectl kustomize`;
#   2. validate the output strictly (unknown fields rejected) against Kubernetes $K8S_VERSION
#      with kubernetes-validate;
#   3. validate the KEDA resources against KEDA's CRD schema, strictly (keda_validate.py);
#   4. check that the parts agree with each other and with the settings (consistency.py), and
#      that the binaries accept each overlay's settings, registry and variables (`check-config`
#      of target/debug/{worker,scheduler}, built if needed: binaries_accept.py);
#   5. lint the YAML sources (yamllint) and the Dockerfile (hadolint);
#   6. scan the rendered overlays and the Dockerfile with checkov, offline; skips justified in
#      deploy/checks/checkov.yaml;
#   7. self-check: render each deploy/checks/selfcheck/<case> (the eu overlay with one known
#      breakage) and assert that the validator named in its first line rejects it, with the
#      expected message. A check that stops catching its case fails the run.
#
# Tools: pinned in deploy/checks/requirements*.txt, installed on first use (with uv, itself pinned
# below) into two venvs under
# $DEPLOY_TOOLS_DIR (default ~/.cache/user-import/deploy-tools), reinstalled only when a pin
# changes. Needs python3 >= 3.11 with venv (installed from Debian when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

K8S_VERSION=1.32.0
TOOLS=${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/user-import/deploy-tools}
CHECKS=deploy/checks
OUT=$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
T_START=$(now)

# --- tools --------------------------------------------------------------------------------

python_ok() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

find_python() {
  local p
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && python_ok "$p"; then
      command -v "$p"
      return
    fi
  done
  echo "== installing python3-venv (Debian)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  python_ok /usr/bin/python3 || { echo "deploy-check: no python3 >= 3.11 with venv" >&2; exit 1; }
  echo /usr/bin/python3
}

# uv (PyPI) installs the pinned sets in seconds where pip takes minutes (checkov: ~10 s vs ~220 s
# on 2 busy cores); it is itself installed with pip, pinned.
UV_VERSION=0.13.9
uv() {
  local python
  if [[ ! -x $TOOLS/uv/bin/uv || $("$TOOLS/uv/bin/uv" --version) != "uv $UV_VERSION"* ]]; then
    python=$(find_python)
    echo "== installing uv $UV_VERSION into $TOOLS/uv" >&2
    rm -rf "$TOOLS/uv"
    "$python" -m venv "$TOOLS/uv"
    "$TOOLS/uv/bin/pip" install --quiet --disable-pip-version-check --no-input "uv==$UV_VERSION" >&2
  fi
  # The system's CA bundle (the one pip is configured with here) rather than uv's built-in roots;
  # never a Python download: the venvs use the machine's interpreter.
  local cert=${SSL_CERT_FILE:-}
  [[ -z $cert && -f /etc/ssl/certs/ca-certificates.crt ]] && cert=/etc/ssl/certs/ca-certificates.crt
  env ${cert:+SSL_CERT_FILE="$cert"} UV_CACHE_DIR="$TOOLS/uv-cache" UV_PYTHON_DOWNLOADS=never \
    "$TOOLS/uv/bin/uv" "$@"
}

# venv NAME REQUIREMENTS: (re)creates $TOOLS/NAME when the pins (or the interpreter) changed.
venv() {
  local name=$1 req=$2 dir=$TOOLS/$1 stamp python t0
  python=$(find_python)
  stamp="$(sha256sum "$req" | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.version)' | head -1)"
  if [[ -f $dir/.stamp && $(cat "$dir/.stamp") == "$stamp" ]]; then
    return
  fi
  echo "== installing $name tools from $req into $dir"
  t0=$(now)
  rm -rf "$dir"
  uv venv --quiet --python "$python" "$dir"
  uv pip install --quiet --compile-bytecode --python "$dir/bin/python" -r "$req"
  echo "$stamp" >"$dir/.stamp"
  echo "   $name installed in $(elapsed "$t0") s"
}

install_tools() {
  mkdir -p "$TOOLS"
  # One installer at a time (two checks started together share the directory).
  exec 9>"$TOOLS/.lock"
  flock 9
  venv py "$CHECKS/requirements.txt"
  venv checkov "$CHECKS/requirements-checkov.txt"
  flock -u 9
}

T0=$(now)
install_tools
PY=$TOOLS/py/bin
export PATH="$PY:$PATH"   # checkov's kustomize support and image.sh look for kubectl on PATH
echo "== tools ready ($(elapsed "$T0") s): $("$PY/kubectl" version --client | head -1 | sed 's/Client Version: /kubectl /')," \
  "kubernetes-validate $("$PY/kubernetes-validate" --version), $("$PY/yamllint" --version)," \
  "$("$PY/hadolint" --version | sed 's/Haskell Dockerfile Linter /hadolint /')," \
  "checkov $("$TOOLS/checkov/bin/python" -c 'import importlib.metadata as m; print(m.version("checkov"))')"

FAILED=0
fail() { echo "FAIL: $*"; FAILED=1; }

# --- 1. render ------------------------------------------------------------------------------
T0=$(now)
mkdir -p "$OUT/rendered"
OVERLAYS=()
for dir in deploy/overlays/*/; do
  region=$(basename "$dir")
  OVERLAYS+=("$OUT/rendered/$region.yaml")
  "$PY/kubectl" kustomize "$dir" >"$OUT/rendered/$region.yaml"
  echo "ok   rendered $dir: $(grep -c '^kind:' "$OUT/rendered/$region.yaml") resources"
done
((${#OVERLAYS[@]} >= 2)) || fail "expected an overlay per region (eu, us), found ${#OVERLAYS[@]}"
echo "== 1. render: $(elapsed "$T0") s"

# The validators, as functions of rendered files: used on the overlays and the self-check.
validate_k8s() {
  "$PY/kubernetes-validate" --strict -k "$K8S_VERSION" --quiet --no-warn "$@"
}
validate_keda() {
  "$PY/python" "$CHECKS/keda_validate.py" --schema-cache "$TOOLS/py/keda-schemas" "$@"
}
validate_consistency() {
  "$PY/python" "$CHECKS/consistency.py" --secrets-dir deploy/secrets "$@"
}
BIN_DIR=${CARGO_TARGET_DIR:-target}/debug
validate_binaries() {
  "$PY/python" "$CHECKS/binaries_accept.py" --bin-dir "$BIN_DIR" "$@"
}

# --- 2.-4. validate -------------------------------------------------------------------------
T0=$(now)
for f in "${OVERLAYS[@]}"; do
  if out=$(validate_k8s "$f" 2>&1); then
    echo "ok   $(basename "$f"): valid against Kubernetes $K8S_VERSION (strict)"
  else
    printf '%s\n' "$out"
    fail "$(basename "$f") does not validate against Kubernetes $K8S_VERSION"
  fi
done
echo "== 2. kubernetes-validate: $(elapsed "$T0") s"

T0=$(now)
validate_keda "${OVERLAYS[@]}" || fail "KEDA resources do not validate"
echo "== 3. KEDA schema: $(elapsed "$T0") s"

T0=$(now)
validate_consistency "${OVERLAYS[@]}" || fail "the manifests do not agree with each other"
echo "== 4. consistency: $(elapsed "$T0") s"

T0=$(now)
# The debug binaries (a no-op after `cargo test`, which builds them for the integration tests).
if cargo build --quiet --locked -p worker -p scheduler; then
  validate_binaries "${OVERLAYS[@]}" || fail "the binaries refuse an overlay's configuration"
else
  fail "cannot build the worker and scheduler binaries to check the configuration with"
fi
echo "== 4b. binaries accept the configuration: $(elapsed "$T0") s"

# --- 5. lint --------------------------------------------------------------------------------
T0=$(now)
if "$PY/yamllint" --strict -c "$CHECKS/yamllint.yaml" deploy/; then
  echo "ok   yamllint deploy/"
else
  fail "yamllint"
fi
if "$PY/hadolint" --config "$CHECKS/hadolint.yaml" Dockerfile; then
  echo "ok   hadolint Dockerfile"
else
  fail "hadolint"
fi
echo "== 5. lint: $(elapsed "$T0") s"

# --- 7 (first half). render the self-check cases --------------------------------------------
T0=$(now)
# A case's first line: "# selfcheck: <validator>: <regular expression its output must match>".
mkdir -p "$OUT/selfcheck" "$OUT/checkov"
CASES=()
for dir in "$CHECKS"/selfcheck/*/; do
  name=$(basename "$dir")
  header=$(head -1 "$dir/kustomization.yaml")
  if [[ ! $header =~ ^\#\ selfcheck:\ ([a-z-]+):\ (.+)$ ]]; then
    fail "$dir: first line must be '# selfcheck: <validator>: <expected output>'"
    continue
  fi
  if ! "$PY/kubectl" kustomize "$dir" >"$OUT/selfcheck/$name.yaml" 2>"$OUT/selfcheck/$name.err"; then
    cat "$OUT/selfcheck/$name.err"
    fail "self-check case $name does not render"
    continue
  fi
  CASES+=("$name")
done
echo "== 7a. rendered ${#CASES[@]} self-check cases: $(elapsed "$T0") s"

# --- 6. checkov (the overlays, the Dockerfile, and the checkov self-check cases: one run) -----
T0=$(now)
cp "${OVERLAYS[@]}" "$OUT/checkov/"
cp Dockerfile "$OUT/checkov/Dockerfile"
for name in "${CASES[@]}"; do
  [[ $(head -1 "$CHECKS/selfcheck/$name/kustomization.yaml") == "# selfcheck: checkov: "* ]] &&
    cp "$OUT/selfcheck/$name.yaml" "$OUT/checkov/selfcheck-$name.yaml"
done
# checkov exits 1 when anything fails, which the self-check cases always do: judge from its JSON.
"$TOOLS/checkov/bin/checkov" --config-file "$CHECKS/checkov.yaml" -d "$OUT/checkov" \
  -o json >"$OUT/checkov.json" 2>"$OUT/checkov.err" || true
if ! "$PY/python" - "$OUT/checkov.json" >"$OUT/checkov.txt" <<'EOF'
import json, sys
raw = json.load(open(sys.argv[1]))
reports = raw if isinstance(raw, list) else [raw]
failed, passed = {}, 0
for r in reports:
    results = r.get("results", {})
    passed += r.get("summary", {}).get("passed", 0)
    for c in results.get("failed_checks", []):
        failed.setdefault(c["file_path"].lstrip("/"), []).append(c)
frameworks = sorted(r.get("check_type", "?") for r in reports)
if frameworks != ["dockerfile", "kubernetes"]:
    print(f"checkov scanned {frameworks}, expected dockerfile and kubernetes")
    sys.exit(1)
bad = False
for path, checks in sorted(failed.items()):
    if path.startswith("selfcheck-"):
        print(f"selfcheck {path}: " + " ".join(sorted({c['check_id'] for c in checks})))
        continue
    bad = True
    for c in checks:
        print(f"FAIL {path}: {c['check_id']} {c['check_name']} ({c.get('resource')})")
print(f"checkov: {passed} passed; failures only in self-check cases: {not bad}")
sys.exit(1 if bad else 0)
EOF
then
  cat "$OUT/checkov.txt" "$OUT/checkov.err"
  fail "checkov"
else
  grep -v '^selfcheck ' "$OUT/checkov.txt" | sed 's/^/ok   /'
fi
echo "== 6. checkov: $(elapsed "$T0") s"

# --- 7b. self-check: every case rejected by its validator, with its message -----------------
T0=$(now)
for name in "${CASES[@]}"; do
  header=$(head -1 "$CHECKS/selfcheck/$name/kustomization.yaml")
  [[ $header =~ ^\#\ selfcheck:\ ([a-z-]+):\ (.+)$ ]]
  validator=${BASH_REMATCH[1]}
  expected=${BASH_REMATCH[2]}
  file=$OUT/selfcheck/$name.yaml
  rc=0
  case $validator in
    kubernetes-validate) out=$(validate_k8s "$file" 2>&1) || rc=$? ;;
    keda) out=$(validate_keda "$file" 2>&1) || rc=$? ;;
    consistency) out=$(validate_consistency "$file" 2>&1) || rc=$? ;;
    binaries) out=$(validate_binaries "$file" 2>&1) || rc=$? ;;
    checkov)
      out=$(grep "^selfcheck selfcheck-$name.yaml:" "$OUT/checkov.txt" || true)
      [[ -n $out ]] && rc=1
      ;;
    *) fail "self-check case $name: unknown validator $validator"; continue ;;
  esac
  if [[ $rc -eq 0 ]]; then
    fail "self-check: $validator ACCEPTED the broken manifest of case $name"
  elif ! grep -Eq -- "$expected" <<<"$out"; then
    printf '%s\n' "$out"
    fail "self-check: $validator rejected case $name, but not with /$expected/"
  else
    echo "ok   self-check $name: $validator rejects it: $(grep -Eo -- "$expected.{0,40}" <<<"$out" | head -1)"
  fi
done
((${#CASES[@]} >= 4)) || fail "too few self-check cases (${#CASES[@]})"
echo "== 7b. self-check: $(elapsed "$T0") s"

if ((FAILED)); then
  echo "deploy-check: FAILED ($(elapsed "$T_START") s)"
  exit 1
fi
echo "deploy-check: all checks passed, ${#CASES[@]} broken manifests rejected ($(elapsed "$T_START") s)"
