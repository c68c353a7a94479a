#!/usr/bin/env bash
# Builds `.gpu/picie`: picie linked against libtorch 2.11 (tch 0.24) for a GPU machine whose
# PyTorch is 2.11 and which cannot build Rust (scripts/gpu-check.sh runs it there).
# The repository stays on tch 0.26 / libtorch 2.13: Cargo.toml accepts tch 0.24 to 0.26, and
# the copy of the tree under the cache folder locks 0.24 (`cargo update --precise`; no file is
# edited). Idempotent; repeated builds are incremental.
#   bash scripts/gpu-build.sh            # -> .gpu/picie (stripped)
# Override the cache folder with PICIE_GPU_CACHE, the Python that makes the venv with PYTHON.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${PICIE_GPU_CACHE:-$HOME/.cache/picie}
TORCH=2.11.0             # the device's PyTorch
TCH=0.24.0               # the tch release generated against libtorch 2.11
VENV=$CACHE/torch-2.11   # side venv: its libtorch is linked here and runs the CPU dry run
SRC=$CACHE/src-gpu       # a fixed path, so that cargo's fingerprints survive between builds
export CARGO_TARGET_DIR=$CACHE/target-gpu
PY=${PYTHON:-python3}

# 1. The side venv (full install with the CUDA wheels, as on the device, so that the binary
#    also runs here on the CPU). numpy + pyarrow are what gpu_compare.py needs.
STAMP=$VENV/.picie-gpu-venv-v1
if ! { [ -f "$STAMP" ] && "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; }; then
    mkdir -p "$CACHE"
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    echo "gpu-build: installing torch==$TORCH, numpy, pyarrow into $VENV (first time: a few GB)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH" numpy pyarrow
    touch "$STAMP"
fi
"$VENV/bin/python" -c "import torch; print('gpu-build: side venv torch', torch.__version__, 'cuda', torch.version.cuda)"

# 2. A copy of what the device would get (tracked + untracked-not-ignored files, as they are
#    in the working tree now). tar keeps mtimes, so unchanged files do not rebuild.
STAGE=$(mktemp -d "$CACHE/stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - ) | tar -xf - -C "$STAGE"
# Cargo.toml must still accept tch $TCH (the lock below selects it); fail loudly if not.
grep -q '^tch = ">=0.24, <0.27"$' "$STAGE/Cargo.toml" \
    || { echo "gpu-build: Cargo.toml's tch requirement no longer admits $TCH; update this script" >&2; exit 1; }
# Keep the previous build's lock file (already moved to tch 0.24) unless the repo's changed.
if [ -f "$SRC/Cargo.lock" ] && [ -f "$SRC/.lock-from" ] && cmp -s "$ROOT/Cargo.lock" "$SRC/.lock-from"; then
    cp -p "$SRC/Cargo.lock" "$STAGE/Cargo.lock"
fi
cp -p "$ROOT/Cargo.lock" "$STAGE/.lock-from"
# Replace $SRC by the stage, copying only files whose contents changed (mtimes stay put).
mkdir -p "$SRC"
(cd "$SRC" && find . -type f ! -name Cargo.lock -print0) | while IFS= read -r -d '' f; do
    [ -e "$STAGE/$f" ] || rm -f "$SRC/$f"
done
(cd "$STAGE" && find . -type f -print0) | while IFS= read -r -d '' f; do
    if ! cmp -s "$STAGE/$f" "$SRC/$f"; then mkdir -p "$(dirname "$SRC/$f")"; cp -p "$STAGE/$f" "$SRC/$f"; fi
done

# 3. Build against the side venv's libtorch (torch-sys asks the `python` on PATH where it is;
#    build.rs adds the rpath and keeps libtorch_cuda linked, as in the main build).
export VIRTUAL_ENV=$VENV PATH=$VENV/bin:$PATH LIBTORCH_USE_PYTORCH=$VENV
cd "$SRC"
# Locks tch and torch-sys at $TCH; everything else stays as locked.
if ! grep -A1 '^name = "tch"$' Cargo.lock | grep -q "^version = \"$TCH\"$"; then
    cargo update --quiet -p tch --precise "$TCH"
fi
cargo build --release --bin picie --features cuda
BIN=$CARGO_TARGET_DIR/release/picie

# 4. Stripped into .gpu/ (ignored by git; the device run carries it).
mkdir -p "$ROOT/.gpu"
strip -o "$ROOT/.gpu/picie.tmp" "$BIN"
mv "$ROOT/.gpu/picie.tmp" "$ROOT/.gpu/picie"
# What the binary was built from, for the device's results.
{
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) against torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') (tch $TCH)"
    echo "from commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- && echo "" || echo " plus uncommitted changes") of $ROOT"
} > "$ROOT/.gpu/BUILD-INFO"
grep -qxF '/.gpu' "$ROOT/.gitignore" || echo '/.gpu' >> "$ROOT/.gitignore"
SIZE=$(stat -c %s "$ROOT/.gpu/picie")
echo "gpu-build: wrote .gpu/picie ($((SIZE / 1048576)) MiB, $SIZE bytes), tch $TCH, libtorch $TORCH"
"$ROOT/.gpu/picie" --version
