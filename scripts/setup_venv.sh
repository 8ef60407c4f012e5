#!/usr/bin/env bash
# Create or reuse the repo's virtual environment (.venv) with the pinned dependencies from
# requirements.txt. Re-installs only when a requirements file changed. Source it or run it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 13) else 1)'; then
  echo "hr_depth_ros needs Python 3.10-3.12; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.requirements.sha256"
# What requirements.txt installs (requirements-ros2-launch.txt has a stamp of its own, below).
WANT="$(cat "$REPO"/requirements-core.txt "$REPO"/requirements.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[setup] installing pinned dependencies into $VENV (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REPO/requirements.txt"
  echo "$WANT" > "$STAMP"
else
  echo "[setup] $VENV is up to date"
fi
# ROS 2 launch system and ros2 command from ../shared/third_party/ros2 when it is there (CI, this
# machine); a ROS 2 install provides them otherwise.
bash "$REPO/scripts/setup_ros2_launch.sh" "$VENV"
