#!/usr/bin/env bash
# Fetches the real photographs the redaction tests use, from PyPI's scikit-image 0.24.0 wheel
# (downloaded, not installed; the files are inside the wheel, public domain / CC0 / LFW):
#   astronaut.png   512x512 RGB, one frontal face (Eileen Collins, NASA; public domain)
#   camera.png      512x512 grey, one face in three-quarter profile (CC0)
#   lfw_subset.npy  200 x 25x25 float64 crops from Labeled Faces in the Wild: 100 faces, then
#                   100 non-faces
# into tests/data/faces/ (or the folder given as $1), checking each file's SHA-256.
# Used by tests/e2e/redaction.rs; .ci/run calls this before the tests.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/faces}"
mkdir -p "$dest"

declare -A sums=(
  [astronaut.png]=88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5
  [camera.png]=b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a
  [lfw_subset.npy]=9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c
)

ok() { [[ -f "$dest/$1" ]] && echo "${sums[$1]}  $dest/$1" | sha256sum --check --status; }
missing=()
for f in "${!sums[@]}"; do ok "$f" || missing+=("$f"); done
if ((${#missing[@]} == 0)); then
  echo "face photos present in $dest"
  exit 0
fi

python="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading scikit-image 0.24.0's wheel for ${missing[*]}"
"$python" -m pip download --quiet scikit-image==0.24.0 --no-deps --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_17_x86_64 -d "$tmp"
wheel=("$tmp"/scikit_image-0.24.0-*.whl)
"$python" - "${wheel[0]}" "$dest" "${missing[@]}" <<'PY'
import sys, zipfile, pathlib
wheel, dest, names = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        (dest / name).write_bytes(z.read(f"skimage/data/{name}"))
PY
for f in "${missing[@]}"; do
  ok "$f" || { echo "error: $f does not match its SHA-256" >&2; rm -f "$dest/$f"; exit 1; }
done
echo "face photos written to $dest"
