#!/usr/bin/env bash
# benchmarks/gpu_training.py on a lent GPU machine, the one command to run there (BENCHMARKS.md).
#
#   here:   make wheels-gpu-bench           # ~3 MB of wheels into wheels/ (git-ignored)
#   there:  bash benchmarks/device_gpu_training.sh       (the device tool: carry ["wheels"], timeout_s 600)
#
# That machine has torch, transformers, accelerate, pandas, pyarrow and xxhash but no trl, datasets or
# omegaconf, and reaches no registry: the carried wheels go into a folder of their own on PYTHONPATH
# (--no-deps: nothing is resolved or replaced in its environment), and octrain runs from src/ (an editable
# install would need setuptools from a registry for its isolated build). Results land under $OUT:
# gpu_training.json (rewritten after every configuration, so a kill keeps what was measured),
# gpu_training.log and machine.txt.
set -uo pipefail

OUT="${OUT:-$PWD/runs/gpu-bench}"
WHEELS="${WHEELS:-wheels}"
BUDGET="${BUDGET:-450}"  # seconds for the grid; the script skips what would not fit
PYTHON="${PYTHON:-python3}"  # the machine's Python, the one with torch
BENCH_ARGS="${BENCH_ARGS:-}"  # e.g. "--smoke" for a dry run of this wrapper on a CPU
SITE=/tmp/octrain-gpu-bench-site
mkdir -p "$OUT"

if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "no wheels in $WHEELS/: run 'make wheels-gpu-bench' here and carry $WHEELS" >&2
    exit 2
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || exit 3
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
    "$PYTHON" - <<'EOF'
from importlib import metadata
for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pyarrow", "fsspec", "huggingface_hub"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "missing")
EOF
} 2>&1 | tee "$OUT/machine.txt"

# Fail in seconds, not after a model build, when an import is broken (a version the wheels do not suit).
"$PYTHON" -c "import octrain.trainers.trl_dpo, octrain.trainers.trl_sft, trl, datasets, peft" 2>&1 | tee -a "$OUT/machine.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 4

timeout --kill-after=15 $((BUDGET + 60)) \
    "$PYTHON" benchmarks/gpu_training.py $BENCH_ARGS --budget "$BUDGET" --out "$OUT/gpu_training.json" 2>&1 | tee "$OUT/gpu_training.log"
exit "${PIPESTATUS[0]}"
