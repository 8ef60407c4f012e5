#!/usr/bin/env bash
# The demo command: set up .venv (pinned) and run the whole loop on bundled synthetic data.
# Extra arguments go to `python -m hr_depth_ros.tools.demo` (see --help).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup_venv.sh"
cd "$REPO"
export PATH="$REPO/.venv/bin:$PATH"
exec "$REPO/.venv/bin/python" -m hr_depth_ros.tools.demo "$@"
