#!/usr/bin/env python3
"""Offline checks of everything under deploy/ (run by scripts/check-deploy, which installs
the tools and builds the binaries first; see that script for the arguments).

Each check compares a deployment file with the real thing it depends on: the units and
manifests name only flags the built binaries accept, the edge's stop timeout outlasts its
drain deadline, the ConfigMap's regions.yaml passes `locator check-config`, every TURN
secret it names is in the Secret, the rules and the dashboard's queries parse and the
rules' unit tests pass, the Dockerfile's build command builds and what it copies exists.
Every external checker is first shown a broken input and must refuse it, so a checker
that silently accepts everything fails here instead of passing.

The metric names the rules and the dashboard use are compared with what a running locator
and edge export by locator/tests/deploy.rs (a Rust test over the real binaries).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
FAILURES = []


def fail(where, message):
    FAILURES.append(f"{where}: {message}")


def run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


def duration_secs(text):
    """`90s`, `5m`, `1h30m`, `500ms` (the binaries' duration syntax) in seconds."""
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    for number, unit in parts:
        total += int(number) * units[unit]
    return total


def flags_of_help(binary, *subcommand):
    out = run([binary, *subcommand, "--help"])
    if out.returncode != 0:
        raise SystemExit(f"{binary} {' '.join(subcommand)} --help failed: {out.stderr}")
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout))


def flags_used(args):
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def check_flags(where, args, known):
    for flag in flags_used(args):
        if flag not in known:
            fail(where, f"{flag} is not a flag of the binary (its --help lists {sorted(known)})")


# ---------------------------------------------------------------------------- systemd


def unit_entries(text):
    """(section, key, value) of a unit file, in order."""
    section, out = None, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def systemd_verify(path):
    """`systemd-analyze verify` passes only with exit 0 and nothing said: it merely
    warns (exit 0) about an unknown key or an unparsable value."""
    out = run(["systemd-analyze", "verify", "--man=no", str(path)])
    said = (out.stdout + out.stderr).strip()
    return out.returncode == 0 and not said, said


def check_systemd(bin_dir, locator_flags, edge_flags):
    with tempfile.TemporaryDirectory(prefix="locus-units-") as tmp:
        tmp = Path(tmp)
        units = {}
        for unit in sorted((DEPLOY / "systemd").glob("*.service")):
            # The units name /usr/local/bin; verify needs the binaries they start to exist.
            text = unit.read_text().replace("/usr/local/bin/", f"{bin_dir}/")
            name = unit.name.replace("@.service", "@eu-west-1.service")
            (tmp / name).write_text(text)
            units[unit.name] = (tmp / name, unit_entries(unit.read_text()))
        # The checker must refuse broken units, or it proves nothing.
        good = tmp / "locus-locator.service"
        for label, broken in [
            ("unknown value", good.read_text().replace("ProtectSystem=strict", "ProtectSystem=strickt")),
            ("missing binary", good.read_text().replace(f"{bin_dir}/locator serve", f"{bin_dir}/no-such-locator serve")),
        ]:
            bad = tmp / "broken.service"
            bad.write_text(broken)
            ok, _ = systemd_verify(bad)
            if ok:
                fail("systemd-analyze verify", f"accepted a unit with a {label}: the check cannot fail")
            bad.unlink()
        for name, (path, entries) in units.items():
            ok, said = systemd_verify(path)
            if not ok:
                fail(f"deploy/systemd/{name}", f"systemd-analyze verify: {said}")
            out = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", "--threshold=20", str(path)])
            if out.returncode != 0:
                tail = out.stdout.strip().splitlines()[-1:] or [out.stderr.strip()]
                fail(f"deploy/systemd/{name}", f"systemd-analyze security above 2.0: {tail[0]}")
            keys = {}
            for _, key, value in entries:
                keys.setdefault(key, []).append(value)
            for key, want in [("DynamicUser", "yes"), ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes")]:
                if keys.get(key) != [want]:
                    fail(f"deploy/systemd/{name}", f"{key}={want} expected, found {keys.get(key)}")
            if not keys.get("StateDirectory"):
                fail(f"deploy/systemd/{name}", "no StateDirectory= for its database or spool")
            env_defaults = dict(v.split("=", 1) for v in keys.get("Environment", []))
            for exec_line in keys.get("ExecStart", []) + keys.get("ExecStartPre", []):
                words = exec_line.split()
                binary = Path(words[0]).name
                args = words[1:]
                if binary == "locator":
                    check_flags(f"deploy/systemd/{name} {args[0]}", args, flags_of_help(f"{bin_dir}/locator", args[0]))
                else:
                    check_flags(f"deploy/systemd/{name}", args, edge_flags)
                # Every ${VAR} has a default in the unit or a line in the example env file.
                example = (DEPLOY / "systemd" / ("locator.env.example" if binary == "locator" else "edge.env.example")).read_text()
                for var in re.findall(r"\$\{([A-Z_]+)\}", exec_line):
                    if var not in env_defaults and not re.search(rf"^#?{var}=", example, re.M):
                        fail(f"deploy/systemd/{name}", f"${{{var}}} has no default and is missing from the example env file")
            if name.startswith("locus-locator"):
                if keys.get("ExecReload") != ["/bin/kill -HUP $MAINPID"]:
                    fail(f"deploy/systemd/{name}", "ExecReload must send SIGHUP (the locator re-reads regions.yaml)")
            if name.startswith("locus-edge"):
                stop = duration_secs(keys["TimeoutStopSec"][0])
                drain = duration_secs(env_defaults["EDGE_DRAIN_DEADLINE"])
                if stop <= drain:
                    fail(f"deploy/systemd/{name}", f"TimeoutStopSec {stop}s must exceed the drain deadline {drain}s")


# ---------------------------------------------------------------------------- Kubernetes


def k8s_documents():
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def container(doc, name):
    for c in doc["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise KeyError(name)


def check_kubernetes(validator, bin_dir, locator_flags, edge_flags):
    files = sorted(str(p) for p in (DEPLOY / "kubernetes").glob("*.yaml"))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as bad:
        bad.write("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: three\n")
        bad.flush()
        if run([validator, "--strict", "--quiet", bad.name]).returncode == 0:
            fail("kubernetes-validate", "accepted a Deployment with replicas: three: the check cannot fail")
    out = run([validator, "--strict", "--quiet", *files])
    if out.returncode != 0:
        fail("deploy/kubernetes", f"kubernetes-validate --strict:\n{out.stdout}{out.stderr}")
    docs = k8s_documents()
    by_kind = {}
    for file, doc in docs:
        by_kind.setdefault(doc["kind"], []).append((file, doc))

    # The locators.
    deployments = {d["metadata"]["name"]: (f, d) for f, d in by_kind.get("Deployment", [])}
    file, locator = deployments["locus-locator"]
    where = f"deploy/kubernetes/{file} Deployment locus-locator"
    if locator["spec"].get("replicas") != 3:
        fail(where, "replicas must be 3")
    main = container(locator, "locator")
    if main["args"][0] != "serve":
        fail(where, "the locator container must run `serve`")
    check_flags(where, main["args"][1:], flags_of_help(f"{bin_dir}/locator", "serve"))
    if main.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        fail(where, "readinessProbe must GET /readyz")
    if main.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        fail(where, "livenessProbe must GET /healthz")
    if not any(a.startswith("--database=postgres") or a == "--database=$(LOCATOR_DATABASE)" for a in main["args"]):
        fail(where, "several locators need a Postgres --database")
    labels = locator["spec"]["template"]["metadata"]["labels"]
    pdbs = [d for _, d in by_kind.get("PodDisruptionBudget", [])]
    if not any(set(p["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()) for p in pdbs):
        fail(where, "no PodDisruptionBudget selects the locators")
    services = [d for _, d in by_kind.get("Service", [])]
    if not any(set(s["spec"]["selector"].items()) <= set(labels.items()) for s in services):
        fail(where, "no Service selects the locators")

    # regions.yaml from the ConfigMap: valid, and its TURN secrets are in the Secret.
    configmaps = {d["metadata"]["name"]: d for _, d in by_kind.get("ConfigMap", [])}
    regions_text = configmaps["locus-regions"]["data"]["regions.yaml"]
    regions = yaml.safe_load(regions_text)
    region_ids = {r["id"] for r in regions["regions"]}
    with tempfile.TemporaryDirectory(prefix="locus-regions-") as tmp:
        path = Path(tmp) / "regions.yaml"
        path.write_text(regions_text)
        # Its GeoIP file lives on a volume this machine does not have: check with the demo.
        out = run([f"{bin_dir}/locator", "check-config", "--config", str(path), "--geoip", "builtin-demo"])
        if out.returncode != 0:
            fail("deploy/kubernetes ConfigMap locus-regions", f"locator check-config: {out.stderr.strip()}")
    secrets = {d["metadata"]["name"]: d for _, d in by_kind.get("Secret", [])}
    secret_keys = set(secrets["locus-secrets"]["stringData"])
    for region in regions["regions"]:
        var = (region.get("turn") or {}).get("secret_env")
        if var and var not in secret_keys:
            fail("deploy/kubernetes Secret locus-secrets", f"no {var} (TURN secret of region {region['id']})")
    for var in ["LOCATOR_EDGE_KEY", "LOCATOR_ADMIN_TOKEN"]:
        if var not in secret_keys:
            fail("deploy/kubernetes Secret locus-secrets", f"no {var}")
    if "LOCATOR_EDGE_TOKEN" in secret_keys:
        fail("deploy/kubernetes Secret locus-secrets", "LOCATOR_EDGE_TOKEN: edges have their own credentials (Secret locus-edge-credentials), the locators LOCATOR_EDGE_KEY")
    edge_credentials = set((secrets.get("locus-edge-credentials") or {}).get("stringData") or {})

    # The edges: one StatefulSet per region.
    edge_regions = set()
    for file, sts in by_kind.get("StatefulSet", []):
        where = f"deploy/kubernetes/{file} StatefulSet {sts['metadata']['name']}"
        edge = container(sts, "edge")
        args = edge["args"]
        check_flags(where, args, edge_flags)
        values = dict(a.split("=", 1) for a in args if "=" in a)
        region = values.get("--region")
        edge_regions.add(region)
        if region not in region_ids:
            fail(where, f"--region={region} is not a region of the ConfigMap's regions.yaml ({sorted(region_ids)})")
        drain = duration_secs(values.get("--drain-deadline", "60s"))
        grace = sts["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        if grace <= drain:
            fail(where, f"terminationGracePeriodSeconds {grace} must exceed --drain-deadline {drain}s")
        if "--rtc-ports" in values:
            low, high = (int(p) for p in values["--rtc-ports"].split("-"))
            peers = int(values.get("--max-rtc-peers", "500"))
            if high - low + 1 < peers:
                fail(where, f"--rtc-ports {low}-{high} has fewer ports than --max-rtc-peers {peers} (one port per peer)")
        spool = values.get("--spool-dir", "")
        mounts = [m["mountPath"] for m in edge.get("volumeMounts", [])]
        claims = [c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])]
        if not any(spool.startswith(m + "/") or spool == m for m in mounts) or not claims:
            fail(where, f"--spool-dir {spool} must be on a volume of the volumeClaimTemplates")
        if sts["spec"]["template"]["spec"].get("securityContext", {}).get("runAsNonRoot") is not True:
            fail(where, "edges run as non-root")
        # Each edge reads its own credential; the Secret has one per pod.
        env = {e["name"]: e for e in edge.get("env", [])}
        if "LOCATOR_EDGE_TOKEN_FILE" not in env:
            fail(where, "LOCATOR_EDGE_TOKEN_FILE: each edge reads its own credential from the Secret locus-edge-credentials")
        name = sts["metadata"]["name"]
        for ordinal in range(sts["spec"].get("replicas", 1)):
            if f"{name}-{ordinal}" not in edge_credentials:
                fail(where, f"no credential {name}-{ordinal} in the Secret locus-edge-credentials")
    if not edge_regions:
        fail("deploy/kubernetes", "no edge StatefulSet")


# ---------------------------------------------------------------------------- Prometheus


def check_prometheus():
    prom = DEPLOY / "prometheus"
    with tempfile.TemporaryDirectory(prefix="locus-rules-") as tmp:
        bad = Path(tmp) / "bad.yml"
        bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m]) > \n")
        if run(["promtool", "check", "rules", str(bad)]).returncode == 0:
            fail("promtool check rules", "accepted a rule that does not parse: the check cannot fail")
        for args in (
            ["check", "rules", str(prom / "locus-alerts.yml")],
            ["test", "rules", str(prom / "locus-alerts.test.yml")],
            ["check", "config", str(prom / "scrape-config.yml")],
        ):
            out = run(["promtool", *args])
            if out.returncode != 0:
                fail(f"promtool {' '.join(args[:2])} {Path(args[2]).name}", out.stdout + out.stderr)
        # Every runbook link of an alert leads to a heading of docs/operations.md.
        runbook = (ROOT / "docs" / "operations.md").read_text()
        slugs = {
            re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", runbook, re.M)
        }
        for anchor in sorted(set(re.findall(r"docs/operations\.md#([a-z0-9-]+)", (prom / "locus-alerts.yml").read_text()))):
            if anchor not in slugs:
                fail("deploy/prometheus/locus-alerts.yml", f"links docs/operations.md#{anchor}, which is no heading there")
        # The dashboard's queries must parse too: check them as recording rules.
        dashboard = json.loads((DEPLOY / "grafana" / "locus-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        if not exprs:
            fail("deploy/grafana/locus-dashboard.json", "no queries")
        rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}]}
        path = Path(tmp) / "dashboard-queries.yml"
        path.write_text(yaml.safe_dump(rules))
        out = run(["promtool", "check", "rules", str(path)])
        if out.returncode != 0:
            fail("deploy/grafana/locus-dashboard.json", f"a query does not parse: {out.stdout}{out.stderr}")


# ---------------------------------------------------------------------------- Dockerfile

# What gcr.io/distroless/cc-debian12 ships (glibc, libgcc), by soname.
DISTROLESS_CC_LIBS = {
    "linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0",
    "libdl.so.2", "librt.so.1", "libutil.so.1", "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1", "libstdc++.so.6",
}


def dockerfile_cargo_command():
    text = (DEPLOY / "Dockerfile").read_text()
    commands = re.findall(r"^RUN (cargo build .*)$", text, re.M)
    if len(commands) != 1:
        raise SystemExit(f"deploy/Dockerfile: expected one `RUN cargo build …`, found {commands}")
    return commands[0].split()


def check_dockerfile(bin_dir):
    text = (DEPLOY / "Dockerfile").read_text()
    command = dockerfile_cargo_command()
    for flag in ("--release", "--locked"):
        if flag not in command:
            fail("deploy/Dockerfile", f"the build command lacks {flag}")
    # Whatever the image copies out of target/release must be a binary the command builds.
    copied = re.findall(r"^COPY --from=build /src/target/release/(\S+) ", text, re.M)
    if sorted(copied) != ["edge", "locator"]:
        fail("deploy/Dockerfile", f"copies {copied}, expected the locator and edge binaries")
    # ... and be built by it: a bin target of a package it names (binaries left in
    # target/ by other builds do not count).
    meta = run(["cargo", "metadata", "--no-deps", "--locked", "--format-version", "1"], cwd=ROOT)
    if meta.returncode != 0:
        raise SystemExit(f"cargo metadata failed: {meta.stderr}")
    packages = {command[i + 1] for i, word in enumerate(command[:-1]) if word == "-p"}
    built = {
        t["name"]
        for p in json.loads(meta.stdout)["packages"]
        if p["name"] in packages
        for t in p["targets"]
        if "bin" in t["kind"]
    }
    for name in copied:
        if name not in built:
            fail("deploy/Dockerfile", f"copies target/release/{name}, which `{' '.join(command)}` does not build")
        binary = Path(bin_dir) / name
        if not binary.exists():
            fail("deploy/Dockerfile", f"copies target/release/{name}, which its cargo command does not build")
            continue
        out = run(["ldd", str(binary)])
        libs = {line.split()[0].rsplit("/", 1)[-1] for line in out.stdout.splitlines() if line.strip()}
        extra = libs - DISTROLESS_CC_LIBS
        if extra:
            fail("deploy/Dockerfile", f"{name} links {sorted(extra)}, which distroless/cc does not ship")
    if not re.search(r"^USER 65532", text, re.M):
        fail("deploy/Dockerfile", "the image must run as the non-root user 65532")
    if "/bin/sh" in text or re.search(r"^(ENTRYPOINT|CMD) [^\[]", text, re.M):
        fail("deploy/Dockerfile", "ENTRYPOINT/CMD must be exec form: the runtime image has no shell")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True, help="folder with the built locator and edge")
    parser.add_argument("--kubernetes-validate", required=True, help="the kubernetes-validate program")
    args = parser.parse_args()
    bin_dir = str(Path(args.bin).resolve())
    locator_flags = flags_of_help(f"{bin_dir}/locator", "serve")
    edge_flags = flags_of_help(f"{bin_dir}/edge")
    check_systemd(bin_dir, locator_flags, edge_flags)
    check_kubernetes(args.kubernetes_validate, bin_dir, locator_flags, edge_flags)
    check_prometheus()
    check_dockerfile(bin_dir)
    if FAILURES:
        print(f"deploy checks: {len(FAILURES)} problem(s)", file=sys.stderr)
        for f in FAILURES:
            print(f"  {f}", file=sys.stderr)
        return 1
    print("deploy checks: systemd units, Kubernetes manifests, alert rules, dashboard queries and Dockerfile OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
