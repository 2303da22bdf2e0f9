#!/usr/bin/env bash
# What only a GPU can show, in stages that each fit one call of a lent GPU machine (10 min):
#
#   bash benchmarks/gpu_session.sh tests              # the whole suite, CUDA tests included
#   bash benchmarks/gpu_session.sh losses model       # benchmarks -> $OUT/<stage>_gpu.json
#   bash benchmarks/gpu_session.sh inference train
#
# Then, back here: python benchmarks/report.py <the JSON files> (tables + targets met or not).
# The GPU machines have torch, triton, transformers, pytest-benchmark and pytest-xdist but no
# network and no DALI, so the project is installed without its dependencies (DALI tests skip).
# Before the first call, copy the real test images into the checkout and carry them (both
# folders are ignored by git), with build tools in case the machine's setuptools is too old:
#   mkdir -p .shared_data && cp -r ../shared/data/. .shared_data/
#   python3 -m pip download --no-deps -d .whl "setuptools>=77" wheel
# and call the device tool with carry [".shared_data", ".whl"].
# Output: $OUT (./gpu_results without it): log.txt and one JSON per benchmark stage.
set -uo pipefail
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
export DAF_SHARED_DATA=${DAF_SHARED_DATA:-$PWD/.shared_data}

install() { $PY -m pip install --no-deps --no-build-isolation --no-index -e . >>"$LOG" 2>&1; }
if ! $PY -c "import depth_anything_fast.kernels, depth_anything_fast._C" 2>/dev/null; then
    # pyproject.toml needs setuptools >= 77; an older one there is shadowed by a carried wheel
    if ! install && ! { ls .whl/setuptools-*.whl >/dev/null 2>&1 \
            && $PY -m pip install -q --no-index --no-deps --target /tmp/build-tools .whl/*.whl \
            && PYTHONPATH=/tmp/build-tools install; }; then
        echo "install failed:"; tail -30 "$LOG"; exit 1
    fi
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__, 'C++ kernels', __import__('depth_anything_fast.ops',
fromlist=['cpu_available']).cpu_available())"
    echo "shared data: $DAF_SHARED_DATA"
} 2>&1 | tee -a "$LOG"

status=0
for stage in "$@"; do
    echo "== $stage $(date -u +%H:%M:%S)" | tee -a "$LOG"
    case $stage in
        tests)
            workers=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
            # shellcheck disable=SC2086
            $PY -m pytest tests -q -p no:cacheprovider $workers 2>&1 | tee -a "$LOG"
            ;;
        losses|model|inference|train|data)
            $PY -m pytest "benchmarks/bench_$stage.py" --benchmark-only -q -p no:cacheprovider \
                --benchmark-json "$OUT/${stage}_gpu.json" 2>&1 | tail -60 | tee -a "$LOG"
            ;;
        *)
            echo "unknown stage '$stage' (tests, losses, model, inference, train, data)"
            exit 2
            ;;
    esac
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
exit $status
