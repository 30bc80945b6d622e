#!/usr/bin/env bash
# Install what the test suite needs and run all of it. The tests start their own services: a real
# single-node Kafka (deploy/local-kafka.sh, jars from Maven Central cached in ~/.cache/bulkwatch) and a
# real Prometheus server (Debian's package). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  apt-get update -q && apt-get install -y -q --no-install-recommends openjdk-17-jre-headless maven
fi
bash deploy/install-promtool.sh
python -m pip install -q --disable-pip-version-check -e '.[dev]'
ruff check .
# Compile the Numba kernels into their on-disk cache once (a minute or two on a clean clone), so the
# tests that start bulkwatch as a subprocess, with start-up deadlines, find them compiled.
bulkwatch warm-up
python -m pytest "$@"
