#!/usr/bin/env bash
# One GPU measurement run of everything (benchmarks/gpu_suite.py --help says what):
#   bash benchmarks/gpu_suite.sh OUT_DIR [--parts NAME ...]
# PYTHON picks the interpreter (default python3). Refuses in one line, exit 2, without a GPU.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_suite.py" "$@"
