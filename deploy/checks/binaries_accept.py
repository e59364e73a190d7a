"""Runs `worker check-config` and `scheduler check-config` on each rendered overlay's own
configuration, as its pods would get it: settings.toml and tenants.toml from the rendered
ConfigMaps, and the container's environment (the region ConfigMap's variables, the literal `env`
values; Secret values are left out, their settings keep their defaults). Only the paths are moved
into a temporary directory (USER_IMPORT__REGISTRY__* and USER_IMPORT__WORK_DIR).

The binaries refuse unknown keys and bad values (settings, registry, OTEL_* variables), so a
setting renamed in the code or mistyped in an overlay fails here rather than in a pod.

Usage: python binaries_accept.py --bin-dir target/debug RENDERED.yaml...
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml


def configmap(docs: list[dict], prefix: str) -> dict:
    found = [d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"].startswith(prefix)]
    if len(found) != 1:
        raise SystemExit(f"expected one ConfigMap {prefix}*, found {len(found)}")
    return found[0].get("data") or {}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", type=Path, required=True)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    failed = False
    for path in args.files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        region_env = configmap(docs, "user-import-region-")
        tenants = configmap(docs, "user-import-tenants-")["tenants.toml"]
        expected = len(tomllib.loads(tenants).get("tenant", []))
        with tempfile.TemporaryDirectory() as tmp:
            tmpdir = Path(tmp)
            (tmpdir / "settings.toml").write_text(configmap(docs, "user-import-settings-")["settings.toml"])
            (tmpdir / "tenants.toml").write_text(tenants)
            (tmpdir / "keys").mkdir()
            # The Secret's keys are not in the overlay; `worker check-config` wants one per
            # enabled tenant, so a placeholder of each stands in for the mounted Secret.
            for tenant in tomllib.loads(tenants).get("tenant", []):
                (tmpdir / "keys" / tenant["name"]).write_text("placeholder-key\n")
            for d in docs:
                if d.get("kind") != "Deployment":
                    continue
                container = d["spec"]["template"]["spec"]["containers"][0]
                binary = Path(container["command"][0]).name
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
                env.update(region_env)
                env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
                env.pop("USER_IMPORT_CONFIG", None)
                env.update({
                    "USER_IMPORT__REGISTRY__FILE": str(tmpdir / "tenants.toml"),
                    "USER_IMPORT__REGISTRY__SECRETS_DIR": str(tmpdir / "keys"),
                    "USER_IMPORT__WORK_DIR": tmp,
                })
                run = subprocess.run(
                    [str(args.bin_dir / binary), "--config", str(tmpdir / "settings.toml"), "check-config"],
                    env=env, capture_output=True, text=True, timeout=60,
                )
                ok = run.returncode == 0 and f"ok: {expected} tenants" in run.stdout
                where = f"{path.name}: {d['metadata']['name']} ({binary} check-config)"
                if ok:
                    print(f"ok   {where}: {run.stdout.strip()}")
                else:
                    failed = True
                    print(f"FAIL {where}: exit {run.returncode}, expected {expected} tenants\n"
                          f"{run.stdout}{run.stderr}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
