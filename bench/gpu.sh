#!/usr/bin/env bash
# The GPU figures in one command, on a machine with CUDA: the GPU-marked tests, the training
# benchmarks (the seeds' MLP and a CIFAR-10-shaped CNN with mixed precision, channels_last and
# compile, each against a plain PyTorch loop on the same device in the same run) and the /predict
# benchmark, written into BENCHMARKS.md's "## GPU" section. bench/gpu.py does the work.
#
#   bench/gpu.sh              # needs CUDA; exits 2 with a message without it
#   bench/gpu.sh --dry-run    # anywhere: the same steps on the CPU at toy sizes (1-2 min); the
#                             # section goes to a copy of BENCHMARKS.md
#   bench/gpu.sh --help       # the other options (rounds, epochs, skipping a part)
#
# The interpreter: $PYTHON, else the repository's .venv, else python3 (with tas's dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi
if ! "$py" -c "import torch, pytest, tas.core.pipeline" 2>/dev/null; then
    echo "bench/gpu.sh: $py cannot import torch, pytest and tas: run 'make install' (a .venv)" \
        "or set PYTHON to an interpreter that has them" >&2
    exit 2
fi
# cuBLAS's deterministic reductions (the GPU tests compare runs bit for bit) need a fixed
# workspace, read when the first cuBLAS handle is made.
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
exec "$py" bench/gpu.py "$@"
