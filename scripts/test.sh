#!/usr/bin/env bash
# The test command: set up .venv (pinned) and run the whole suite, including the colcon build
# check (test/test_package_build.py). Extra arguments go to pytest.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup_venv.sh"
cd "$REPO"
# ROS traffic stays on this machine, on a domain of its own.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
export PATH="$REPO/.venv/bin:$PATH"
exec "$REPO/.venv/bin/python" -m pytest test -p no:cacheprovider -ra --durations=15 "$@"
