#!/usr/bin/env bash
# Set up (idempotent) and run the demo: synthetic H&E -> the whole pipeline -> measured table.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE
histowsss demo "$@"
