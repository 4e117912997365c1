#!/usr/bin/env bash
# Fetches a real camera stream of people seen from above for the moving-region redaction test:
# OpenCV's sample video `vtest.avi` (768x576, 10 frames/s, pedestrians filmed from a first-floor
# window; Debian package `opencv-doc`, Apache-2.0/BSD-3-Clause), and decodes its first 30 s,
# every second frame, to JPEG with the ffmpeg binary shipped in PyPI's `imageio-ffmpeg` wheel
# (downloaded, not installed). Both downloads are checked by SHA-256 of what we use.
#   tests/data/people/vtest/NNNN.jpg   frame NNNN of the video (N even, 0..298)
# The people in frames 100, 200 and 298 were boxed by hand: tests/data/people_boxes.json.
# Used by tests/e2e/redaction.rs; .ci/run calls this before the tests.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/people/vtest}"
video_sha=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
frames=150

if [[ -f "$dest/.complete" ]] && [[ "$(cat "$dest/.complete")" == "$video_sha $frames" ]]; then
  echo "people video frames present in $dest"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading Debian's opencv-doc for vtest.avi"
(cd "$tmp" && { apt-get download -q opencv-doc >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null && apt-get download -q opencv-doc >/dev/null; }; })
deb=("$tmp"/opencv-doc_*.deb)
dpkg-deb --fsys-tarfile "${deb[0]}" \
  | tar -x -C "$tmp" ./usr/share/doc/opencv-doc/examples/data/vtest.avi
video="$tmp/usr/share/doc/opencv-doc/examples/data/vtest.avi"
echo "$video_sha  $video" | sha256sum --check --status \
  || { echo "vtest.avi has an unexpected SHA-256" >&2; exit 1; }

python="${PYTHON:-python3}"
echo "downloading imageio-ffmpeg's wheel for its ffmpeg binary"
"$python" -m pip download --quiet imageio-ffmpeg==0.8.1 --no-deps --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$tmp"
wheel=("$tmp"/imageio_ffmpeg-*.whl)
"$python" - "${wheel[0]}" "$tmp/ffmpeg" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if "/binaries/ffmpeg-" in n)
    with open(out, "wb") as f:
        f.write(z.read(name))
os.chmod(out, 0o755)
PY

rm -rf "$dest"
mkdir -p "$dest"
"$tmp/ffmpeg" -hide_banner -loglevel error -i "$video" \
  -vf "select='lt(n\,300)*not(mod(n\,2))'" -fps_mode passthrough -frame_pts true -q:v 2 \
  "$dest/%04d.jpg"
count=$(find "$dest" -name '*.jpg' | wc -l)
if [[ "$count" -ne "$frames" ]]; then
  echo "decoded $count frames, expected $frames" >&2
  exit 1
fi
echo "$video_sha $frames" > "$dest/.complete"
echo "decoded $count frames of vtest.avi into $dest"
