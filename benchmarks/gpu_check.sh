#!/usr/bin/env bash
# One command for an NVIDIA GPU machine (H100/H200 class): the Triton kernel tests on CUDA, then the
# kernel benchmark table (WKV and LIF vs the PyTorch path and fla, gate+LIF fusion estimate, T=1 step)
# and the 216M-shape training step (tokens/s, MFU). Expects torch, triton and transformers installed
# (no network needed); installs this repository with --no-deps. Run from anywhere:
#
#     bash benchmarks/gpu_check.sh            # results also written under $OUT (default ./gpu_check_out)
#     SWEEP=1 bash benchmarks/gpu_check.sh    # also the Triton WKV launch-shape sweep
#
# Each stage has its own time limit and a failure in one does not stop the next; the exit status is
# non-zero if any stage failed. Expect ~2-4 min of Triton compilation on first use (cached afterwards).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
status=0

echo "== environment"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.cuda.is_available())" || exit 1

echo "== install (editable, no dependencies)"
if ! "$PY" -c "import spikegpt.kernels" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . || { echo "install failed"; exit 1; }
fi

echo "== Triton kernel tests on CUDA (compiled, not interpreted)"
SPIKEGPT_TEST_DEVICE=cuda TRITON_INTERPRET=0 timeout 900 "$PY" -m pytest -q -p no:cacheprovider \
    tests/kernels/test_wkv_triton.py tests/kernels/test_lif_triton.py tests/kernels/test_custom_ops.py \
    2>&1 | tee "$OUT/tests.txt" || status=1

echo "== kernel benchmarks (bf16, B=8, T 1024/4096, C 768/2048) and the 216M training step"
extra=()
[ "${SWEEP:-0}" = "1" ] && extra+=(--sweep)
TRITON_INTERPRET=0 timeout 900 "$PY" benchmarks/bench_kernels.py --fusion --model --json "$OUT/kernels.json" ${extra[@]+"${extra[@]}"} \
    2>&1 | tee "$OUT/kernels.txt" || status=1

exit $status
