#!/usr/bin/env bash
# Starts an S3-compatible server for the blob-store tests: moto's server (PyPI `moto[server]`,
# pinned) in a virtual environment under ~/.cache, on a free loopback port, with the bucket
# `backroom-test`. Prints `PID ENDPOINT` on its last line; the caller stops it (kill PID).
set -euo pipefail
venv="${BACKROOM_MOTO_VENV:-$HOME/.cache/backroom-moto}"
if [[ ! -x "$venv/bin/moto_server" ]]; then
  echo "installing moto[server] 5.2.6 into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "moto[server]==5.2.6"
fi
port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log="${TMPDIR:-/tmp}/backroom-moto-$port.log"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
pid=$!
endpoint="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  if "$venv/bin/python" - "$endpoint" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/backroom-test", method="PUT"), timeout=2)
PY
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "moto_server exited; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.2
done
"$venv/bin/python" - "$endpoint" <<'PY'
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/backroom-test", timeout=5)
PY
echo "$pid $endpoint"
