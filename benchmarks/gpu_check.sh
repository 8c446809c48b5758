#!/usr/bin/env bash
# The CUDA backend on a real GPU (issue #27), as one prepared run that fits the device tool's
# lease: finishes in under 8 minutes (HAL_GPU_CHECK_BUDGET_S, default 470 s), so a second try fits
# in 15 minutes of device time. docs/backends/cuda.md, "Checking on a GPU", says how to use it.
#
#   bash benchmarks/gpu_check.sh prepare      here (with network): .whl/ gets the wheels of
#                                             benchmarks/gpu_wheels.txt for Python 3.12 manylinux
#   bash benchmarks/gpu_check.sh              there (device tool: carry [".whl"]): install what the
#                                             machine lacks, then run every step, results in $OUT
#   HAL_GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh
#                                             here, no GPU: the same steps against this machine's
#                                             CPU-only torch (GPU tests skip, cuda cells say why)
#
# Steps, in order (each under `timeout`, none stops the others): install (the carried wheels
# into a --target site, and hal built from this tree, or the carried hal wheel if that fails),
# environment, `hal devices`, tests/test_cuda.py, conformance -b cuda quick tier,
# benchmarks/bench_cuda.py --sweep (hal/direct at batch 1 and 64, CUDA graphs, torch.compile,
# fp16/bf16, NVML energy, GEMM probe), then a sample of the operator and architecture tiers.
# At most 8 files land in $OUT (the tool's limit):
# summary.txt devices.json test_cuda.log bench_cuda.log conformance.log conformance-quick.json
# conformance-ops.json conformance-models.json
#
# Environment: OUT (default ./out/gpu-check[-dry]); PYTHON (default python3, which on the
# nvidia-h200 machine is the image's Python 3.12 with torch); HAL_GPU_CHECK_BACKEND (default
# cuda; e.g. "reference" runs the conformance steps for real on a CPU); HAL_GPU_CHECK_BUDGET_S;
# HAL_GPU_CHECK_MODELS (the architecture sample, default "resnet18 mobilenet_v2 vit_tiny"; the
# dry run's default is mobilenet_v2 alone).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${1:-}" = "prepare" ]; then
    set -e
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || git check-ignore -q .whl \
        || echo /.whl/ >> .git/info/exclude
    reqs=$(grep -v '^\s*#' benchmarks/gpu_wheels.txt | sed 's/\s*#.*//' | grep -v '^\s*$')
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 --platform any -d .whl $reqs
    # hal itself, built from this tree now: the fallback where the machine cannot build it
    src=$(mktemp -d); trap 'rm -rf "$src"' EXIT
    cp -r hal backends conformance pyproject.toml README.md MANIFEST.in constraints.txt "$src/"
    rm -f .whl/hal_accel-*.whl
    python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl "$src"
    ls -la .whl
    du -sh .whl
    exit 0
fi

DRY=${HAL_GPU_CHECK_DRY:-0}
PY=${PYTHON:-python3}
BACKEND=${HAL_GPU_CHECK_BACKEND:-cuda}
BUDGET=${HAL_GPU_CHECK_BUDGET_S:-470}
if [ "$DRY" = 1 ]; then OUT=${OUT:-$ROOT/out/gpu-check-dry}; else OUT=${OUT:-$ROOT/out/gpu-check}; fi
mkdir -p "$OUT"
SITE=$(mktemp -d "${TMPDIR:-/tmp}/hal-gpu-site.XXXXXX")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hal-gpu-work.XXXXXX")
trap 'rm -rf "$SITE" "$WORK"' EXIT
export PYTHONUNBUFFERED=1 HAL_CACHE_DIR="$WORK/cache" MPLBACKEND=Agg
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME CAP LOG CMD...: run CMD under min(CAP, what is left of the budget), log appended
step() {
    local name=$1 cap=$2 log=$3; shift 3
    local t; t=$(left); [ "$t" -gt "$cap" ] && t=$cap
    if [ "$t" -lt 15 ]; then
        note "SKIP  $name: ${t}s left of the ${BUDGET}s budget"; FAILED=1; return
    fi
    echo "+ [$name] $* (timeout ${t}s)" >> "$log"
    local s rc; s=$(date +%s)
    timeout --kill-after=10 "$t" "$@" >> "$log" 2>&1
    rc=$?
    local d=$(( $(date +%s) - s ))
    if [ "$rc" -eq 0 ]; then note "ok    $name (${d}s)";
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note "TIME  $name: stopped at ${t}s"; FAILED=1
    else note "FAIL  $name: exit $rc after ${d}s (see $(basename "$log"))"; FAILED=1; fi
}

note "hal gpu_check $( [ "$DRY" = 1 ] && echo '(DRY RUN: no GPU expected)') backend=$BACKEND budget=${BUDGET}s"
note "tree: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git') $(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l | tr -d ' ') changed file(s); $(date -u +%FT%TZ)"

# --- install: the carried wheels (what the machine lacks), then hal from this tree ------------
LOG_INSTALL="$WORK/install.log"
shopt -s nullglob
deps=(); halwheel=()
for w in .whl/*.whl; do case $(basename "$w") in hal_accel-*) halwheel+=("$w") ;; *) deps+=("$w") ;; esac; done
if [ ${#deps[@]} -gt 0 ]; then
    step "install carried wheels (${#deps[@]})" 120 "$LOG_INSTALL" "$PY" -m pip install -q --no-index \
        --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${deps[@]}"
else
    note "note  no .whl/ carried: using what is installed (bash benchmarks/gpu_check.sh prepare, then carry .whl)"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# hal from a copy of this tree (a build writes build/ and *.egg-info beside its source), with
# the machine's own setuptools, so it is always the code being checked; the hal wheel that
# `prepare` carried is the fallback where that build fails
mkdir -p "$WORK/src"
cp -r hal backends conformance pyproject.toml README.md "$WORK/src/"
[ -f MANIFEST.in ] && cp MANIFEST.in constraints.txt "$WORK/src/"
if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
        --upgrade --target "$SITE" "$WORK/src" >> "$LOG_INSTALL" 2>&1; then
    if [ ${#halwheel[@]} -gt 0 ]; then
        note "note  building hal from the tree failed (install log below): the carried ${halwheel[0]} is used"
        step "install carried hal wheel" 60 "$LOG_INSTALL" "$PY" -m pip install -q --no-index --no-deps \
            --no-compile --no-cache-dir --upgrade --target "$SITE" "${halwheel[0]}"
    else
        note "FAIL  install hal from this tree (install log below)"; FAILED=1
    fi
else
    note "ok    install hal from this tree"
fi
export PATH="$SITE/bin:$PATH"

# --- environment ------------------------------------------------------------------------------
{
    echo "--- environment"
    "$PY" - <<'EOF' 2>&1
import importlib.metadata as m, platform, sys
print("python", sys.version.split()[0], sys.executable, platform.machine())
for d in ("hal-accel", "torch", "numpy", "platformdirs", "pluggy", "typer", "rich", "filelock",
          "safetensors", "nvidia-ml-py", "transformers", "scikit-learn", "matplotlib", "pytest",
          "pytest-timeout", "hypothesis", "onnx", "onnxscript", "triton"):
    try:
        print(f"  {d} {m.version(d)}")
    except m.PackageNotFoundError:
        print(f"  {d} MISSING")
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          "devices", torch.cuda.device_count(),
          *( [torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)] if torch.cuda.is_available() else []))
except Exception as e:
    print("torch import failed:", e)
EOF
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv 2>&1
    else
        echo "nvidia-smi: not on PATH"
    fi
    echo "--- install log"
    cat "$LOG_INSTALL"
} >> "$SUMMARY"
# the cwd must not shadow the installed hal_backends/hal_conformance: run the tools from $WORK
cd "$WORK"
# (stdout of hal devices --json is JSON only: it is its own file)
step "hal devices" 60 "$WORK/devices.err" bash -c '"$0" -m hal.cli devices --json > "$1"' "$PY" "$OUT/devices.json"
"$PY" - "$OUT/devices.json" <<'EOF' >> "$SUMMARY" 2>&1
import json, sys
d = json.load(open(sys.argv[1]))
for dev in d["devices"]:
    if dev["backend"] in ("cuda", "reference"):
        print(f"  {dev['target']:14s} {dev['kind']:9s} available={dev['available']} {dev['name']} "
              f"{dev.get('reason') or ''}"[:300])
EOF

# --- the tests --------------------------------------------------------------------------------
cd "$ROOT"
step "tests/test_cuda.py" 200 "$OUT/test_cuda.log" "$PY" -m pytest -q -rA -p no:cacheprovider \
    --timeout 150 tests/test_cuda.py
tail -n 3 "$OUT/test_cuda.log" | sed 's/^/  /' >> "$SUMMARY"
# submit/map, many threads and placement on the cuda devices (they parametrize over every device)
step "async, threads and placement on cuda" 150 "$OUT/test_async.log" "$PY" -m pytest -q -rA \
    -p no:cacheprovider --timeout 120 -k cuda tests/test_async.py tests/test_concurrency.py \
    $(ls tests/test_placement_backends.py 2>/dev/null)
tail -n 3 "$OUT/test_async.log" | sed 's/^/  /' >> "$SUMMARY"
cd "$WORK"

# --- conformance: quick tier, then a sample of the operator and architecture tiers ------------
CLOG="$OUT/conformance.log"
step "conformance quick -b $BACKEND" 150 "$CLOG" "$PY" -m hal.cli conformance -b "$BACKEND" \
    --timeout 120 --json "$OUT/conformance-quick.json"

# --- benchmarks (before the tier samples: the figures are owed, the samples are a sample) ----
cd "$ROOT"
step "benchmarks/bench_cuda.py --sweep" 150 "$OUT/bench_cuda.log" "$PY" benchmarks/bench_cuda.py \
    --sweep --rounds 10 --iters 100
grep -E "^===|ratio|throughput|energy|GEMM|FAILED|skipped" "$OUT/bench_cuda.log" | sed 's/^/  /' >> "$SUMMARY"

cd "$WORK"
ops=(conv2d conv_transpose2d max_pool2d gelu layer_norm softmax matmul scaled_dot_product_attention
     lstm embedding upsample_bilinear cumsum)
args=(); for o in "${ops[@]}"; do args+=(-m "$o"); done
step "conformance ops sample (${#ops[@]} families) -b $BACKEND" 100 "$CLOG" "$PY" -m hal.cli conformance \
    -b "$BACKEND" --suite ops "${args[@]}" --timeout 60 --json "$OUT/conformance-ops.json"
# the dry run builds one architecture: its fp64 oracle alone takes minutes on a small CPU
if [ "$DRY" = 1 ]; then default_models="mobilenet_v2"; else default_models="resnet18 mobilenet_v2 vit_tiny"; fi
read -r -a models <<< "${HAL_GPU_CHECK_MODELS:-$default_models}"
args=(); for o in "${models[@]}"; do args+=(-m "$o"); done
step "conformance models sample (${models[*]}) -b $BACKEND" 150 "$CLOG" "$PY" -m hal.cli conformance \
    -b "$BACKEND" --suite models "${args[@]}" --timeout 120 --json "$OUT/conformance-models.json"
grep -E "^hal conformance|cells" "$CLOG" | sed 's/^/  /' >> "$SUMMARY"

note "done in $(( $(date +%s) - START ))s; $( [ "$FAILED" = 0 ] && echo 'every step passed' || echo 'some steps did not pass')"
note "files: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$FAILED"
