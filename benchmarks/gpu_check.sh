#!/usr/bin/env bash
# Everything only a GPU can show, in ONE call of a lent GPU machine (10 minutes, install
# included): the CUDA tests, the loss benchmarks (CUDA cases, each fused vs eager vs
# torch.compile, plus the copy bandwidth; the affine/CutMix kernels also with atomic
# histograms), the model's bf16 forward, pseudo-label throughput on ViT-L, and the inference
# paths' images/s (ViT-S/B/L at batch 16 and 64: the default Predictor, transformers fp32, ONNX
# Runtime's CUDA provider on our export where onnxruntime-gpu and the exporter are installed).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine: results in $OUT
#   DRY_RUN=1 bash benchmarks/gpu_check.sh  # anywhere: collect each step's selection only
#
# Every step has its own time budget; its results (benchmark JSON, JUnit XML) are written when
# it finishes, with $OUT/<step>.json saying how it ended, so a run killed at its limit keeps
# what the finished steps measured.
# Then, back here: python benchmarks/benchmark_report.py $OUT/*_gpu.json (tables + targets).
# The GPU machines have torch, triton, transformers and pytest-benchmark but no network and
# no DALI: the project is installed without dependencies. Before the call, copy the real test
# images and build tools into the checkout and carry them (both folders are ignored by git):
#   mkdir -p .shared_data && cp -r ../shared/data/. .shared_data/
#   python3 -m pip download --no-deps -d .whl "setuptools>=77" wheel
# device tool: command "bash benchmarks/gpu_check.sh", carry [".shared_data", ".whl"].
set -uo pipefail
OUT=${OUT:-gpu_results}
DRY_RUN=${DRY_RUN:-0}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
export DAF_SHARED_DATA=${DAF_SHARED_DATA:-$PWD/.shared_data}
START=$(date +%s)

# step NAME BUDGET_S PYTEST_ARGS...: one pytest run under its own timeout -> $OUT/NAME.json.
step() {
    local name=$1 budget=$2
    shift 2
    if [ "$DRY_RUN" = 1 ]; then  # collected together at the end (one interpreter start)
        (IFS=$'\t'; echo "$name	$*") >>"$OUT/dry_steps.txt"
        return
    fi
    local t0 rc
    t0=$(date +%s)
    echo "== $name (budget ${budget}s, $(( t0 - START ))s elapsed)" | tee -a "$LOG"
    timeout --signal=TERM --kill-after=10 "$budget" "$PY" -m pytest -p no:cacheprovider -q \
        "$@" 2>&1 | tail -40 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    printf '{"step": "%s", "rc": %d, "seconds": %d, "timed_out": %s}\n' "$name" "$rc" \
        "$(( $(date +%s) - t0 ))" "$([ "$rc" = 124 ] && echo true || echo false)" >"$OUT/$name.json"
}

rm -f "$OUT/dry_steps.txt"
if [ "$DRY_RUN" != 1 ]; then
    install() { $PY -m pip install --no-deps --no-build-isolation --no-index -e . >>"$LOG" 2>&1; }
    if ! $PY -c "import depth_anything_fast.kernels, depth_anything_fast._C" 2>/dev/null; then
        # pyproject.toml needs setuptools >= 77; an older one there is shadowed by a carried wheel
        if ! install && ! { ls .whl/setuptools-*.whl >/dev/null 2>&1 \
                && $PY -m pip install -q --no-index --no-deps --target /tmp/build-tools .whl/*.whl \
                && PYTHONPATH=/tmp/build-tools install; }; then
            echo "install failed:"; tail -30 "$LOG"; exit 1
        fi
    fi
fi
$PY - "$OUT/environment.json" <<'PYEOF'
import json, subprocess, sys
import torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
try:
    info["driver"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20).stdout.strip() or None
except (OSError, subprocess.TimeoutExpired):
    info["driver"] = None
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(info)
PYEOF

# CUDA tests: the Triton kernels and ops at GPU sizes, then the model, loader and
# pseudo-label tests that need CUDA (JUnit XML per run).
step tests_triton 90 --junitxml="$OUT/tests_triton_gpu.xml" \
    tests/test_kernels_triton.py tests/test_ops_triton.py
step tests_cuda 80 --junitxml="$OUT/tests_cuda_gpu.xml" -k cuda \
    tests/test_model.py tests/test_inference_pseudo_label.py tests/test_data_loaders.py
BENCH=(--benchmark-only --benchmark-min-rounds=5)
step losses 135 "${BENCH[@]}" --benchmark-json="$OUT/losses_gpu.json" \
    benchmarks/bench_losses.py -k "(cuda and not fwd-) or copy"  # fwd+bwd: one compile each
DAF_TRITON_HISTOGRAM=atomics step losses_atomics 60 "${BENCH[@]}" \
    --benchmark-json="$OUT/losses_atomics_gpu.json" benchmarks/bench_losses.py \
    -k "cuda and fused and not fwd- and (affine or cutmix)"
step model 90 "${BENCH[@]}" --benchmark-json="$OUT/model_gpu.json" \
    "benchmarks/bench_model.py::test_forward_gpu[transformers-vitl-1-fp32-eager]" \
    "benchmarks/bench_model.py::test_forward_gpu[ours-vitl-16-bf16-eager]" \
    "benchmarks/bench_model.py::test_forward_gpu[ours-vitl-64-bf16-eager]" \
    "benchmarks/bench_model.py::test_forward_gpu[ours-vitl-64-bf16-compiled]"
step inference 90 "${BENCH[@]}" --benchmark-json="$OUT/inference_gpu.json" \
    "benchmarks/bench_inference.py::test_inference_throughput[cuda-vitl-official-loop]" \
    "benchmarks/bench_inference.py::test_inference_throughput[cuda-vitl-pseudo-label]"
# images/s of one batch. The budgets above were cut by 45 s for it (the total stays 590 s):
# estimates, no GPU timing of this step exists yet; it runs last, so a cut-off loses only it.
step inference_batch 45 "${BENCH[@]}" --benchmark-json="$OUT/inference_batch_gpu.json" \
    benchmarks/bench_inference.py -k "test_batch_throughput and cuda"
if [ "$DRY_RUN" = 1 ]; then
    $PY benchmarks/benchmark_gpu_collect.py "$OUT" >>"$LOG" 2>&1 || { tail -30 "$LOG"; exit 1; }
fi
echo "done in $(( $(date +%s) - START ))s" | tee -a "$LOG"
