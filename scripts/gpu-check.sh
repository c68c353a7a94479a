#!/usr/bin/env bash
# The GPU check, run ON the GPU machine from the repository root, with $OUT set:
#   bash scripts/gpu-check.sh
# It needs .gpu/picie (built by scripts/gpu-build.sh against libtorch 2.11 and carried along)
# and a Python whose torch is 2.11 (its libtorch and CUDA libraries are what picie loads) with
# numpy and pyarrow (scripts/gpu_compare.py). Nothing is built or downloaded here.
#
# Phases: libraries -> device -> the tiny pipeline on the CPU and on the GPU, compared
# number by number -> one epoch of the `faithful` and of the `fast` profile at CamVid's shape.
# Every phase runs under `timeout` within one budget (GPU_CHECK_BUDGET_S, default 450 s), and
# $OUT/gpu-results.md is rewritten after each phase, so a hung or killed check still leaves
# what it had. Exit status: 0 when every phase passed, 1 otherwise.
#
# Dry run without a GPU (device: cpu everywhere, the side venv of gpu-build.sh):
#   OUT=$(mktemp -d) GPU_CHECK_DEVICE=cpu SMOKE=1 bash scripts/gpu-check.sh
# SMOKE=1 shrinks the CamVid-shaped runs to a few images; the tiny comparison is unchanged.
# Other knobs: GPU_CHECK_PYTHON, GPU_CHECK_WORK (scratch folder), PICIE_BIN.
set -uo pipefail   # not -e: a failed phase is recorded and the next one still runs

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
: "${OUT:?set OUT to the folder that receives the results}"
mkdir -p "$OUT"
DEV=${GPU_CHECK_DEVICE:-cuda}
TAG=${DEV//:/}              # for file names
SMOKE=${SMOKE:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
BIN=${PICIE_BIN:-$ROOT/.gpu/picie}
WORK=${GPU_CHECK_WORK:-/tmp/picie-gpu-check}
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
RESERVE=15                  # seconds kept for writing the results at the end
LOG=$OUT/check.log          # everything this script does, in order
RES=$OUT/gpu-results.md
MEM=$OUT/gpumem.csv         # phase,sample,MiB from nvidia-smi every 200 ms
FAILED=0
VERDICT="INCOMPLETE (the check stopped before its end)"
rm -rf "$WORK"
mkdir -p "$WORK/res"
: > "$LOG"
[ "$DEV" = cpu ] || echo "phase,sample,mib" > "$MEM"

log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
# Results are fragments in $WORK/res, joined into $RES after every phase.
frag() { cat >> "$WORK/res/$1"; }
write_results() {
    local f
    {
        echo "# picie GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
        echo
        echo "mode: device \`$DEV\`, SMOKE=$SMOKE, budget ${BUDGET} s; elapsed so far $(( $(date +%s) - T0 )) s; host $(hostname), $(nproc) cores"
        echo
        echo "**verdict: $VERDICT**"
        echo
        for f in 10-device 20-phases 30-compare 40-faithful 50-fast; do
            if [ -f "$WORK/res/$f" ]; then cat "$WORK/res/$f"; echo; fi
        done
    } > "$RES.tmp"
    mv -f "$RES.tmp" "$RES"
}
# Seconds a phase may take: what it asks for, or what is left of the budget.
cap() {
    local left=$((DEADLINE - $(date +%s) - RESERVE))
    if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
PHASES="| phase | result | seconds | peak GPU MiB |\n| --- | --- | ---: | ---: |"
phase_done() {  # name result seconds peak
    PHASES="$PHASES\n| $1 | $2 | $3 | ${4:--} |"
    [ "$2" = ok ] || FAILED=1
    printf '## Phases\n\n%b\n' "$PHASES" > "$WORK/res/20-phases"
    write_results
}
# Runs a command under timeout, output to a log file; sets RC and SECS.
timed() {  # want_s logfile cmd...
    local want=$1 lf=$2; shift 2
    local t; t=$(cap "$want")
    if [ "$t" -lt 10 ]; then RC=999; SECS=0; log "skipped (out of budget): $*"; return; fi
    log "run (timeout ${t}s): $*"
    local s; s=$(date +%s.%N)
    timeout -k 10 "$t" "$@" >> "$lf" 2>&1
    RC=$?
    SECS=$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
    log "  rc $RC after ${SECS}s (log: $(basename "$lf"))"
}
result_of() { case $1 in 0) echo ok;; 124|137) echo TIMEOUT;; 999) echo SKIPPED;; *) echo "FAIL (rc $1)";; esac; }

# GPU memory: nvidia-smi polls in the background during each run on the device.
MEMPID=
BASE_MIB=0
mem_start() {
    MEMF=$WORK/mem-$1.txt
    : > "$MEMF"
    [ "$DEV" = cpu ] && return
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$MEMF" 2>/dev/null &
    MEMPID=$!
}
mem_stop() {  # phase -> PEAK (MiB, or "n/a")
    PEAK=n/a
    [ -n "$MEMPID" ] || return 0
    kill "$MEMPID" 2>/dev/null; wait "$MEMPID" 2>/dev/null; MEMPID=
    awk -v p="$1" '{printf "%s,%d,%s\n", p, NR, $1}' "$MEMF" >> "$MEM"
    PEAK=$(awk 'BEGIN{m=0} $1+0>m{m=$1+0} END{print m}' "$MEMF")
}
# A device run whose peak stays at the idle baseline did not use the GPU, whatever it said.
gpu_used() {
    [ "$DEV" = cpu ] && return 0
    [ "$PEAK" != n/a ] && [ "$((PEAK - BASE_MIB))" -ge 100 ]
}
trap 'mem_stop x >/dev/null 2>&1; write_results' EXIT

# --- 1. libraries: the machine's libtorch 2.11 and its CUDA libraries -----------------------
log "mode: device $DEV, SMOKE=$SMOKE, budget ${BUDGET}s, work $WORK"
PY=
for p in ${GPU_CHECK_PYTHON:-} /opt/torch/.venv/bin/python3 "$HOME/.cache/picie/torch-2.11/bin/python" python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" 2>/dev/null; then PY=$p; break; fi
done
{
    echo "## Device"
    echo
} | frag 10-device
if [ -z "$PY" ]; then
    log "FAIL: no Python with torch found"
    echo "- **FAIL**: no Python with torch found (set GPU_CHECK_PYTHON)" | frag 10-device
    VERDICT="FAIL (no torch)"; phase_done libraries "FAIL (no torch)" 0
    exit 1
fi
# find_spec, not import: finding the folder must not depend on torch importing cleanly.
TORCH_DIR=$("$PY" -c "import importlib.util as u, os; print(os.path.dirname(u.find_spec('torch').origin))")
TORCH_VER=$(sed -n "s/^__version__ = ['\"]\(.*\)['\"]/\1/p" "$TORCH_DIR/version.py" 2>/dev/null | head -1)
SITE=$(dirname "$TORCH_DIR")
LIBS=$TORCH_DIR/lib
# nvidia/*/lib (cu12 wheels) and nvidia/cu13/lib (cu13 wheels): every `lib` folder under nvidia/.
if [ -d "$SITE/nvidia" ]; then
    while IFS= read -r d; do LIBS=$LIBS:$d; done < <(find "$SITE/nvidia" -maxdepth 3 -type d -name lib | sort)
fi
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
log "python $PY; torch $TORCH_VER in $TORCH_DIR"
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
LDD=$(ldd "$BIN" 2>&1)
echo "$LDD" >> "$LOG"
LDD_TORCH=$(echo "$LDD" | grep -i "torch\|not found" | sed 's/ (0x[0-9a-f]*)$//')
LDD_CUDA_MISSING=$(ldd "$TORCH_DIR/lib/libtorch_cuda.so" 2>&1 | grep "not found")
log "ldd picie (torch, not found):"; echo "$LDD_TORCH" | tee -a "$LOG"
[ -n "$LDD_CUDA_MISSING" ] && { log "ldd libtorch_cuda.so, not found:"; echo "$LDD_CUDA_MISSING" | tee -a "$LOG"; }
{
    echo "- binary: \`${BIN#$ROOT/}\`, $(( $(stat -c %s "$BIN" 2>/dev/null || echo 0) / 1048576 )) MiB, $("$BIN" --version 2>&1 | head -1)"
    [ -f "$ROOT/.gpu/BUILD-INFO" ] && sed 's/^/- binary /' "$ROOT/.gpu/BUILD-INFO"
    echo "- torch on this machine: $TORCH_VER in \`$TORCH_DIR\` (python \`$PY\`); $(ldd --version 2>&1 | head -1)"
    echo "- \`ldd .gpu/picie | grep -i 'torch\\|not found'\`:"
    echo '```'
    echo "$LDD_TORCH"
    [ -n "$LDD_CUDA_MISSING" ] && { echo "libtorch_cuda.so:"; echo "$LDD_CUDA_MISSING"; }
    echo '```'
} | frag 10-device
if echo "$LDD" | grep -q "not found"; then
    VERDICT="FAIL (a library is not found)"; phase_done libraries "FAIL (library not found)" 0
    log "FAIL: picie cannot load; see ldd above"
    exit 1
fi
phase_done libraries ok 0

# --- 2. the device: the GPU itself, and picie resolving `device: cuda` ----------------------
if [ "$DEV" != cpu ]; then
    GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)
    nvidia-smi >> "$LOG" 2>&1
    BASE_MIB=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | sort -n | tail -1)
    BASE_MIB=${BASE_MIB:-0}
    log "GPU: $GPU; memory used when idle: $BASE_MIB MiB"
    echo "- GPU (nvidia-smi: name, driver, memory): **$GPU**; memory used before the runs: $BASE_MIB MiB" | frag 10-device
else
    echo "- GPU: none used (CPU dry run)" | frag 10-device
fi

# The tiny pipeline's copies: probe (plan only, on $DEV), seed (init only, CPU) -> init.safetensors -> a (cpu), b ($DEV).
CMP=$WORK/cmp
mkdir -p "$CMP/probe" "$CMP/seed" "$CMP/a" "$CMP/b"
mk_tiny() {  # folder device with_weights
    local w='s|^\(    params: {arch: resnet18\)}|\1}|'
    [ "$3" = 1 ] && w='s|^\(    params: {arch: resnet18\)}|\1, weights: ../init.safetensors}|'
    sed -e "s|^device: .*|device: $2|" -e "s|^store: .*|store: store|" -e "$w" \
        pipelines/gpu/tiny.yaml > "$1/pipeline.yaml"
    grep -q "^device: $2$" "$1/pipeline.yaml" && { [ "$3" = 0 ] || grep -q "weights: ../init.safetensors" "$1/pipeline.yaml"; }
}
mk_tiny "$CMP/probe" "$DEV" 0 && mk_tiny "$CMP/seed" cpu 0 && mk_tiny "$CMP/a" cpu 1 && mk_tiny "$CMP/b" "$DEV" 1 \
    || { log "FAIL: pipelines/gpu/tiny.yaml no longer has the lines this script rewrites"; FAILED=1; }

# `plan` resolves the device as a run does (an absent GPU is an error, not a CPU fallback).
timed 60 "$LOG" "$BIN" plan "$CMP/probe/pipeline.yaml"
DEVLINE=$(grep -m1 "^pipeline \`gpu-tiny\`" "$LOG")
log "picie: $DEVLINE"
if [ "$RC" = 0 ] && echo "$DEVLINE" | grep -q "device $DEV"; then
    echo "- picie's device line (\`picie plan\` of the tiny pipeline with \`device: $DEV\`): \`$DEVLINE\`" | frag 10-device
    phase_done "device: picie resolves \`$DEV\`" ok "$SECS"
else
    echo "- **FAIL**: picie did not resolve \`device: $DEV\` (see check.log): \`$(grep -A1 -m1 "^error" "$LOG" | tr -s ' \n' ' ')\`" | frag 10-device
    phase_done "device: picie resolves \`$DEV\`" "$(result_of "$RC") / no device line" "$SECS"
    log "FAIL: picie cannot use $DEV; the runs below would fail the same way"
    VERDICT="FAIL (picie cannot use $DEV)"; write_results
    exit 1
fi

# --- 3. tiny pipeline: CPU vs device, number by number --------------------------------------
timed 60 "$LOG" "$BIN" run "$CMP/seed/pipeline.yaml" --until init
INIT_KEY=$("$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print([n for n in r['nodes'] if n['name'] == 'init'][0]['outputs']['checkpoint'])" "$CMP/seed/store/runs/gpu-tiny/latest.json" 2>>"$LOG")
if [ "$RC" = 0 ] && [ -n "$INIT_KEY" ] && cp "$CMP/seed/store/objects/${INIT_KEY:0:2}/$INIT_KEY/model.safetensors" "$CMP/init.safetensors"; then
    phase_done "tiny: initial weights (CPU)" ok "$SECS"
else
    phase_done "tiny: initial weights (CPU)" "$(result_of "$RC") / no init checkpoint" "$SECS"
fi

mem_start tiny-cpu
timed 90 "$OUT/tiny-a-cpu.log" "$BIN" run "$CMP/a/pipeline.yaml"
mem_stop tiny-cpu
phase_done "tiny: run A, cpu" "$(result_of "$RC")" "$SECS" "$PEAK"

mem_start "tiny-$TAG"
timed 120 "$OUT/tiny-b-$TAG.log" "$BIN" run "$CMP/b/pipeline.yaml"
mem_stop "tiny-$TAG"
R=$(result_of "$RC")
if [ "$R" = ok ] && ! gpu_used; then
    R="FAIL: GPU memory never rose above the idle $BASE_MIB MiB: CUDA NOT USED"
    log "$R"
fi
phase_done "tiny: run B, $DEV" "$R" "$SECS" "$PEAK"

timed 60 "$WORK/compare.md" "$PY" scripts/gpu_compare.py compare "$CMP/a/store" "$CMP/b/store" gpu-tiny --labels "cpu,$DEV"
cat "$WORK/compare.md" >> "$LOG"
{
    echo "## Tiny pipeline, cpu vs $DEV (pipelines/gpu/tiny.yaml: 32 train / 16 val, 64 px, 1 epoch; both from the same initial weights)"
    echo
    cat "$WORK/compare.md"
} | frag 30-compare
phase_done "tiny: numeric comparison" "$( [ "$RC" = 1 ] && echo "FAIL (tolerance violated)" || { [ "$RC" = 2 ] && echo "FAIL (artifacts missing)" || result_of "$RC"; })" "$SECS"

# --- 4. one epoch of each profile at CamVid's shape -----------------------------------------
N_TRAIN=367
[ "$SMOKE" = 1 ] && N_TRAIN=6
profile() {  # name want_s
    local name=$1 dir=$WORK/$1 f=40-$1
    [ "$1" = fast ] && f=50-fast
    mkdir -p "$dir"
    sed -e "s|^device: .*|device: $DEV|" -e "s|^store: .*|store: store|" pipelines/gpu/$name.yaml > "$dir/pipeline.yaml"
    [ "$SMOKE" = 1 ] && sed -i "s|train_images: 367, val_images: 101|train_images: $N_TRAIN, val_images: 3|" "$dir/pipeline.yaml"
    if ! grep -q "train_images: $N_TRAIN," "$dir/pipeline.yaml"; then
        log "FAIL: pipelines/gpu/$name.yaml no longer has the lines this script rewrites"
        phase_done "$name: one epoch" "FAIL (pipeline file)" 0
        return
    fi
    mem_start "$name"
    timed "$2" "$OUT/$name.log" "$BIN" run "$dir/pipeline.yaml"
    mem_stop "$name"
    local r; r=$(result_of "$RC")
    if [ "$r" != SKIPPED ] && ! gpu_used; then
        r="$r; GPU memory never rose above the idle $BASE_MIB MiB: CUDA NOT USED"
        log "FAIL: $name: CUDA not used"
    fi
    phase_done "$name: one epoch" "$r" "$SECS" "$PEAK"
    {
        echo "## One epoch of \`$name\` (pipelines/gpu/$name.yaml, device $DEV$( [ "$SMOKE" = 1 ] && echo ", SMOKE: $N_TRAIN train / 3 val images"))"
        echo
        echo "result: $r; process wall time ${SECS} s (with libtorch/CUDA start-up)"
        echo
        "$PY" scripts/gpu_compare.py timings "$dir/store" "gpu-$name" --images "$N_TRAIN" \
            --log "$OUT/$name.log" --peak-mib "$( [ "$DEV" = cpu ] && echo "n/a (CPU dry run)" || echo "$PEAK MiB (idle before the runs: $BASE_MIB MiB)")" 2>&1
    } | frag "$f"
    grep -E "^error|panicked" "$OUT/$name.log" 2>/dev/null | head -5 | sed 's/^/    /' | frag "$f"
}
# faithful may use at most half of what is left, so that a slow epoch still leaves fast its turn.
profile faithful "$(( (DEADLINE - $(date +%s) - RESERVE) / 2 < 200 ? (DEADLINE - $(date +%s) - RESERVE) / 2 : 200 ))"
profile fast 200

VERDICT=$( [ "$FAILED" = 0 ] && echo "PASS (every phase ok)" || echo "FAIL (see the phases)")
log "done in $(( $(date +%s) - T0 ))s; $VERDICT"
write_results
echo "---- $RES ----"
cat "$RES"
exit "$FAILED"
