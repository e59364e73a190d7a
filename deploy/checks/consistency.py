"""Checks what schemas cannot see in a rendered overlay: that its parts agree with each other and
with the fleet's settings.

- every NetworkPolicy with a pod selector selects a pod template, and every pod is selected by a
  policy that opens ingress and one that opens egress (the kustomize `labels` pitfall: a label the
  templates lack makes a policy select nothing, and default-deny then cuts the pod off);
- the worker's terminationGracePeriodSeconds exceeds its preStop + worker.drain_timeout + 5 s;
- the ScaledObject targets the worker Deployment (which leaves `replicas` to KEDA), watches
  `<amqp.exchange>.<worker.region>`, aims at amqp.prefetch messages per replica, and its
  TriggerAuthentication exists;
- scheduler.regions is the overlay's region and every tenant of the registry is in it;
- probes use a declared container port, the one of http.listen;
- no Secret is rendered (none is committed), every referenced Secret has a
  deploy/secrets/<name>.example listing the keys used, and Secrets are never mounted with subPath
  (a subPath mount never sees a rotated key).

Settings are read as the binaries read them: settings.toml from the rendered ConfigMap, then
USER_IMPORT__SECTION__KEY variables of the region ConfigMap and of the container.

Usage: python consistency.py --secrets-dir deploy/secrets RENDERED.yaml...
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

import yaml

ENV_PREFIX = "USER_IMPORT__"


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", text):
        total += float(number) * units[unit]
    if total == 0:
        raise ValueError(f"not a duration: {text!r}")
    return total


def env_value(raw: str) -> object:
    """Like shared/src/settings/env.rs: a TOML value when it parses as one, else a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def selects(selector: dict, labels: dict) -> bool:
    if selector.get("matchExpressions"):
        raise ValueError("matchExpressions are not supported by this check")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


class Overlay:
    def __init__(self, path: Path, secrets_dir: Path) -> None:
        self.path = path
        self.secrets_dir = secrets_dir
        self.docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        self.errors: list[str] = []

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def named(self, kind: str, name: str) -> dict | None:
        return next((d for d in self.of_kind(kind) if d["metadata"]["name"] == name), None)

    def fail(self, message: str) -> None:
        self.errors.append(message)

    def configmap_by_prefix(self, prefix: str) -> dict:
        found = [d for d in self.of_kind("ConfigMap") if d["metadata"]["name"].startswith(prefix)]
        if len(found) != 1:
            raise SystemExit(f"{self.path}: expected one ConfigMap {prefix}*, found {len(found)}")
        return found[0].get("data") or {}

    def settings_for(self, container: dict) -> dict:
        """settings.toml with the region's and the container's USER_IMPORT__ overrides."""
        settings = tomllib.loads(self.configmap_by_prefix("user-import-settings-")["settings.toml"])
        env = dict(self.configmap_by_prefix("user-import-region-"))
        env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
        for var, raw in sorted(env.items()):
            if not var.startswith(ENV_PREFIX):
                continue
            keys = [k.lower() for k in var[len(ENV_PREFIX):].split("__")]
            table = settings
            for k in keys[:-1]:
                table = table.setdefault(k, {})
            table[keys[-1]] = env_value(raw)
        return settings

    def check(self) -> list[str]:
        deployments = {d["metadata"]["name"]: d for d in self.of_kind("Deployment")}
        worker = deployments.get("user-import-worker")
        scheduler = deployments.get("user-import-scheduler")
        if worker is None or scheduler is None:
            self.fail("the worker and scheduler Deployments must both be rendered")
            return self.errors
        self.check_network_policies(deployments)
        wc = worker["spec"]["template"]["spec"]["containers"][0]
        settings = self.settings_for(wc)
        self.check_grace_period(worker, wc, settings)
        self.check_scaled_object(worker, settings)
        self.check_regions(scheduler, settings)
        for d in deployments.values():
            self.check_ports(d, self.settings_for(d["spec"]["template"]["spec"]["containers"][0]))
        self.check_secrets(deployments)
        return self.errors

    def check_network_policies(self, deployments: dict) -> None:
        policies = self.of_kind("NetworkPolicy")
        pods = {n: d["spec"]["template"]["metadata"].get("labels", {}) for n, d in deployments.items()}
        for p in policies:
            sel = p["spec"].get("podSelector") or {}
            if sel and not any(selects(sel, labels) for labels in pods.values()):
                self.fail(f"NetworkPolicy {p['metadata']['name']} selects no pod template "
                          f"(selector {sel}; are the template labels missing?)")
        for name, labels in pods.items():
            mine = [p for p in policies if selects(p["spec"].get("podSelector") or {}, labels)]
            if not any(p["spec"].get("egress") for p in mine):
                self.fail(f"Deployment {name}: no NetworkPolicy opens egress for its pods")
            if not any(p["spec"].get("ingress") for p in mine):
                self.fail(f"Deployment {name}: no NetworkPolicy opens ingress (metrics) for its pods")

    def check_grace_period(self, worker: dict, container: dict, settings: dict) -> None:
        spec = worker["spec"]["template"]["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        drain = duration_seconds(settings.get("worker", {}).get("drain_timeout", "25s"))
        if grace < pre_stop + drain + 5:
            self.fail(f"worker terminationGracePeriodSeconds {grace} < preStop {pre_stop} s + "
                      f"worker.drain_timeout {drain:g} s + 5 s to release locks and disconnect")

    def check_scaled_object(self, worker: dict, settings: dict) -> None:
        objects = self.of_kind("ScaledObject")
        if len(objects) != 1:
            self.fail(f"expected one ScaledObject, found {len(objects)}")
            return
        so = objects[0]["spec"]
        if so.get("scaleTargetRef", {}).get("name") != worker["metadata"]["name"]:
            self.fail(f"ScaledObject scales {so.get('scaleTargetRef')}, not the worker Deployment")
        if "replicas" in worker["spec"]:
            self.fail("the worker Deployment sets replicas: every apply would fight KEDA")
        expected_queue = f"{settings.get('amqp', {}).get('exchange', 'user-import')}." \
                         f"{settings.get('worker', {}).get('region', 'eu')}"
        prefetch = str(settings.get("amqp", {}).get("prefetch", 4))
        for t in so.get("triggers", []):
            meta = t.get("metadata", {})
            if t.get("type") != "rabbitmq":
                continue
            if meta.get("queueName") != expected_queue:
                self.fail(f"ScaledObject watches queue {meta.get('queueName')!r}, the workers "
                          f"consume {expected_queue!r}")
            if meta.get("mode") != "QueueLength":
                self.fail("the rabbitmq trigger must use mode QueueLength")
            if meta.get("protocol") != "http" or meta.get("excludeUnacknowledged") == "true":
                self.fail("the rabbitmq trigger must count unacknowledged (running) jobs: "
                          "protocol http, excludeUnacknowledged not true")
            if meta.get("value") != prefetch:
                self.fail(f"trigger value {meta.get('value')!r} != amqp.prefetch {prefetch}")
            auth = (t.get("authenticationRef") or {}).get("name")
            if auth and self.named("TriggerAuthentication", auth) is None:
                self.fail(f"TriggerAuthentication {auth} is referenced but not rendered")

    def check_regions(self, scheduler: dict, settings: dict) -> None:
        region = settings.get("worker", {}).get("region", "eu")
        sc = scheduler["spec"]["template"]["spec"]["containers"][0]
        regions = self.settings_for(sc).get("scheduler", {}).get("regions", [])
        if regions != [region]:
            self.fail(f"scheduler.regions {regions} is not [{region!r}], this overlay's region")
        registry = tomllib.loads(self.configmap_by_prefix("user-import-tenants-")["tenants.toml"])
        for tenant in registry.get("tenant", []):
            if tenant.get("region") != region:
                self.fail(f"tenant {tenant.get('name')} has region {tenant.get('region')!r} in "
                          f"the registry of region {region!r}")

    def check_ports(self, deployment: dict, settings: dict) -> None:
        listen = settings.get("http", {}).get("listen", "0.0.0.0:9090")
        port = int(listen.rsplit(":", 1)[1])
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            declared = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            if port not in declared.values():
                self.fail(f"{c['name']}: http.listen port {port} is not a container port")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                ref = c.get(probe, {}).get("httpGet", {}).get("port")
                if ref is None:
                    self.fail(f"{c['name']}: no {probe} on the health port")
                elif declared.get(ref, ref) != port:
                    self.fail(f"{c['name']}: {probe} uses port {ref}, health is on {port}")

    def check_secrets(self, deployments: dict) -> None:
        if self.of_kind("Secret"):
            self.fail("a Secret is rendered: secrets are created in the cluster, never committed")
        used: dict[str, set[str]] = {}
        for d in deployments.values():
            spec = d["spec"]["template"]["spec"]
            secret_volumes = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", [])
                              if "secret" in v}
            for name in secret_volumes.values():
                used.setdefault(name, set())
            for c in spec["containers"]:
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        used.setdefault(ref["name"], set()).add(ref["key"])
                for m in c.get("volumeMounts", []):
                    if m["name"] in secret_volumes and m.get("subPath"):
                        self.fail(f"{c['name']}: Secret volume {m['name']} mounted with subPath")
        for ta in self.of_kind("TriggerAuthentication"):
            for ref in ta["spec"].get("secretTargetRef", []):
                used.setdefault(ref["name"], set()).add(ref["key"])
        for name, keys in sorted(used.items()):
            example = self.secrets_dir / f"{name}.example"
            if not example.exists():
                self.fail(f"Secret {name} is referenced but {example} does not document it")
                continue
            text = example.read_text()
            for key in sorted(keys):
                if not re.search(rf"^{re.escape(key)}=", text, re.MULTILINE):
                    self.fail(f"Secret {name}: key {key} is not in {example}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--secrets-dir", type=Path, required=True)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    failed = False
    for path in args.files:
        errors = Overlay(path, args.secrets_dir).check()
        for e in errors:
            print(f"FAIL {path}: {e}")
        if not errors:
            print(f"ok   {path}: policies, grace period, scaler, regions, ports, secrets agree")
        failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
