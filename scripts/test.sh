#!/usr/bin/env bash
# Installs ecgstream with its test extra into the active Python environment and runs the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k wire -x).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e '.[test]'
python -m pytest -q -p no:cacheprovider "$@"
