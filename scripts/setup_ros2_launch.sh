#!/usr/bin/env bash
# Install the ROS 2 launch system, the `ros2` command (launch, run, node, topic, service, param,
# lifecycle verbs), composition_interfaces and tf2_msgs into a venv that has the PyPI ROS wheels,
# from the upstream Kilted sources in SRC (default ../shared/third_party/ros2, see its README).
# Called by scripts/setup_venv.sh. Idempotent: a stamp in the venv (hash of this script, the pins
# and the sources' package.xml files) makes later runs skip it. Nothing is written to SRC or the
# repository: pip and cmake build in temporary copies.
# Usage: setup_ros2_launch.sh VENV [SRC]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$1"
SRC="${2:-$REPO/../shared/third_party/ros2}"
PINS="$REPO/requirements-ros2-launch.txt"

if [ ! -d "$SRC" ]; then
  echo "[setup] $SRC not found: the ROS 2 launch system and ros2 command are not installed into $VENV" \
       "(use a ROS 2 install for ros2 launch; the launch tests skip)"
  exit 0
fi
SRC="$(cd "$SRC" && pwd)"
STAMP="$VENV/.ros2-launch.sha256"
WANT="$(cat "${BASH_SOURCE[0]}" "$PINS" "$SRC"/*/package.xml "$SRC"/fix_wheel_include_dirs.cmake | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$WANT" ]; then
  echo "[setup] ROS 2 launch and ros2 command in $VENV are up to date"
  exit 0
fi
for tool in cmake gcc g++; do
  command -v "$tool" >/dev/null || { echo "[setup] $tool is needed to build composition_interfaces and tf2_msgs from $SRC" >&2; exit 1; }
done

echo "[setup] installing the ROS 2 launch system and ros2 command from $SRC into $VENV (about a minute)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp -r "$SRC" "$WORK/src"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

"${PIP[@]}" -r "$PINS"
# --no-deps: the packages' declared names (launch, ament_index_python, ...) are other projects or
# names no wheel provides on PyPI; their real dependencies are in requirements*.txt.
(cd "$WORK/src" && "${PIP[@]}" --no-deps --no-build-isolation \
  ./launch ./launch_ros ./ros2cli ./ros2pkg ./ros2launch ./rosidl_runtime_py \
  ./ros2node ./ros2service ./ros2topic ./ros2param ./ros2lifecycle ./ros2run)

# Interface packages compiled by the PyPI rosidl generators into the venv prefix.
for pkg in composition_interfaces tf2_msgs; do
  AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" \
    cmake -S "$WORK/src/$pkg" -B "$WORK/build-$pkg" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python" \
      -DCMAKE_PROJECT_INCLUDE="$WORK/src/fix_wheel_include_dirs.cmake" >"$WORK/$pkg.log" 2>&1 \
  && AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" \
    cmake --build "$WORK/build-$pkg" --target install -j"$(nproc)" >>"$WORK/$pkg.log" 2>&1 \
  || { tail -n 30 "$WORK/$pkg.log" >&2; echo "[setup] building $pkg from $SRC/$pkg failed (log above)" >&2; exit 1; }
done

"$VENV/bin/python" -c 'import launch_ros.actions, composition_interfaces.srv, tf2_msgs.msg, ros2cli' \
  || { echo "[setup] the ROS 2 launch packages installed into $VENV do not import" >&2; exit 1; }
echo "$WANT" > "$STAMP"
