#!/usr/bin/env bash
# One command for an NVIDIA GPU machine (H100/H200 class): the kernel benchmark table (WKV and LIF, Triton
# vs the PyTorch path and fla, each row also checked against the PyTorch path; the gate+LIF fusion
# estimate; the T=1 step; the 216M-shape training step with tokens/s and MFU), then the Triton kernel
# tests on CUDA, then a summary of the issue's goals. Expects torch, triton and transformers installed (no
# network needed); installs this repository with --no-deps when it is not importable. Run from anywhere:
#
#     bash benchmarks/gpu_check.sh            # results under $OUT (default ./gpu_check_out)
#     SWEEP=1 bash benchmarks/gpu_check.sh    # also the Triton WKV launch-shape sweep
#     SMOKE=1 bash benchmarks/gpu_check.sh    # CPU: the same stages at toy sizes through the Triton
#                                             # interpreter (checks this script, not the kernels' speed)
#
# Sized for a device session of ~15 minutes in all: the table first (it checks every Triton row against
# the PyTorch path, so its figures stand even if the test stage is cut short), each stage under its own
# limit (BENCH_S, TESTS_S seconds), everything written to $OUT as it is produced. A stage that fails or
# times out does not stop the next; the exit status is non-zero if any did. Triton compiles on first use:
# ~15 s for each WKV backward variant on a slow host CPU, cached afterwards.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-$(command -v python || command -v python3)}"
BENCH_S="${BENCH_S:-240}"
TESTS_S="${TESTS_S:-240}"
status=0
t_start=$(date +%s)
stamp() { echo "[$(($(date +%s) - t_start)) s] $*"; }

if [ "${SMOKE:-0}" = "1" ]; then
    export TRITON_INTERPRET=1 SPIKEGPT_TEST_DEVICE=cpu
    bench_args=(--impls triton torch --batch 1 --ctx 8 --width 8 --repeat 1 --model-shape 1 8 2 16 32)
    test_args=(tests/kernels/test_custom_ops.py -k "opcheck_lif")
else
    export TRITON_INTERPRET=0 SPIKEGPT_TEST_DEVICE=cuda
    bench_args=()
    model=tests/test_modeling_spikegpt.py
    test_args=(tests/kernels/wkv/test_triton_recurrent.py tests/kernels/wkv/test_triton_chunk.py
               tests/kernels/lif/test_triton_recurrent.py tests/kernels/test_custom_ops.py
               "$model::test_triton_backend_model_matches_torch_backend"
               "$model::test_torch_compile_traces_whole_model_without_graph_breaks")
fi
[ "${SWEEP:-0}" = "1" ] && bench_args+=(--sweep)

stamp "== environment"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, \
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee "$OUT/env.txt" || exit 1

if ! "$PY" -c "import spikegpt.kernels" 2>/dev/null; then
    stamp "== install (editable, no dependencies)"
    if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e .; then
        # No build backend here: the source tree is the package as it installs.
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
        "$PY" -c "import spikegpt.kernels" || { echo "install failed"; exit 1; }
        echo "pip install failed; using the source tree through PYTHONPATH=$PWD"
    fi
fi

stamp "== kernel table (CUDA: bf16, B=8, T 1024/4096, C 768/2048) and the 216M training step (limit ${BENCH_S} s)"
timeout "$BENCH_S" "$PY" benchmarks/bench_kernels.py --fusion --model --json "$OUT/kernels.json" \
    ${bench_args[@]+"${bench_args[@]}"} 2>&1 | tee "$OUT/kernels.txt"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || { stamp "kernel table: exit status $rc (124: over its limit; rows so far are in kernels.json)"; status=1; }

stamp "== Triton kernel tests on $SPIKEGPT_TEST_DEVICE (limit ${TESTS_S} s)"
timeout "$TESTS_S" "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/tests.xml" "${test_args[@]}" \
    2>&1 | tee "$OUT/tests.txt"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || { stamp "tests: exit status $rc (124: over its limit; tests.xml is absent then)"; status=1; }

stamp "== summary"
{
    sed -n '/^goals/,$p' "$OUT/kernels.txt"
    grep -E "^model " "$OUT/kernels.txt"
    tail -n 1 "$OUT/tests.txt"
    echo "exit status $status"
} | tee "$OUT/summary.txt"
exit $status
