#!/usr/bin/env bash
# Installs ecgstream with its test extra into the active Python environment and runs the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k wire -x; the fast lane:
# scripts/test.sh -m "not integration and not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== installing ecgstream with its test extra (PyTorch CPU, a test broker, neurokit2, ...;" \
     "several minutes on a fresh environment)"
python -m pip install --progress-bar on -e '.[test]'
echo "== running the tests"
python -m pytest -q -p no:cacheprovider "$@"
