#!/usr/bin/env bash
# Dependency audit with what this workplace can reach (package registries only; see docs/security.md).
#
#   scripts/audit.sh            audit the installed versions of the project's dependencies (runtime
#                               and dev, with everything they pull in)
#
# Two sources, each printed with its date:
#   1. PyPI's per-project JSON: the advisories (OSV, GHSA, PYSEC) of a project's *latest* release,
#      current at the time of the query. It covers an installed version only when that version is
#      the latest one; older installed versions are listed as not covered. (The per-version endpoint
#      pip-audit uses answers 404 here, and api.osv.dev does not resolve.)
#   2. The safety-db wheel on PyPI: PyUp's free advisory snapshot. Offline once downloaded, but its
#      last release is from 2021, so it can only flag very old versions.
# Exit status: 0 no known vulnerability in either source, 1 one or more found, 2 the audit could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! "$PYTHON" -m pip download --quiet --no-deps --dest "$work" "safety-db==2021.7.17"; then
    echo "audit: could not download safety-db from PyPI" >&2
    exit 2
fi

"$PYTHON" - "$work"/safety_db-*.whl <<'PY'
import datetime as dt
import json
import sys
import tomllib
import urllib.error
import urllib.request
import zipfile
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

project = tomllib.loads(open("pyproject.toml", encoding="utf-8").read())["project"]
roots = [Requirement(r) for r in project["dependencies"]]
roots += [Requirement(r) for r in project["optional-dependencies"]["dev"]]

# The installed distributions the project needs: its requirements and theirs, markers evaluated.
installed: dict[str, str] = {}
pending = list(roots)
while pending:
    requirement = pending.pop()
    name = canonicalize_name(requirement.name)
    if name in installed:
        continue
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        print(f"audit: {name} is required but not installed", file=sys.stderr)
        sys.exit(2)
    installed[name] = dist.version
    for text in dist.requires or []:
        child = Requirement(text)
        if child.marker is None or child.marker.evaluate({"extra": ""}):
            pending.append(child)

found = 0
now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
print(f"== PyPI advisories of the latest releases (queried {now}) ==")
not_covered = []
for name, version in sorted(installed.items()):
    url = f"https://pypi.org/pypi/{name}/json"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            document = json.load(response)
    except (urllib.error.URLError, TimeoutError) as exc:
        print(f"audit: {url}: {exc}", file=sys.stderr)
        sys.exit(2)
    latest = document["info"]["version"]
    if Version(version) != Version(latest):
        not_covered.append(f"{name} {version} (latest {latest})")
        continue
    vulnerabilities = document.get("vulnerabilities") or []
    for v in vulnerabilities:
        found += 1
        aliases = ", ".join(v.get("aliases") or [])
        print(f"VULNERABLE {name} {version}: {v['id']} ({aliases}) fixed in {v.get('fixed_in')}")
    if not vulnerabilities:
        print(f"ok {name} {version}")
if not_covered:
    print("not covered (installed version is not the latest release):")
    for line in not_covered:
        print(f"  {line}")

with zipfile.ZipFile(sys.argv[1]) as wheel:
    database = json.loads(wheel.read("safety_db/insecure_full.json"))
stamp = dt.datetime.fromtimestamp(database["$meta"]["timestamp"], dt.UTC).strftime("%Y-%m-%d")
print(f"== safety-db 2021.7.17 (PyUp free database, snapshot of {stamp}) ==")
for name, version in sorted(installed.items()):
    hits = [
        advisory
        for key, advisories in database.items()
        if key != "$meta" and canonicalize_name(key) == name
        for advisory in advisories
        if any(Version(version) in SpecifierSet(spec) for spec in advisory["specs"])
    ]
    for advisory in hits:
        found += 1
        print(f"VULNERABLE {name} {version}: {advisory['id']} {advisory.get('cve') or ''}".rstrip())
print(f"safety-db: {len(installed)} distributions checked")
print(f"audit: {len(installed)} distributions, {found} known vulnerabilities")
sys.exit(1 if found else 0)
PY
