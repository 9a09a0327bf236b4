#!/usr/bin/env bash
# Set up (idempotent) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE
python -m pytest -p no:cacheprovider "$@"
