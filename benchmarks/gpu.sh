#!/usr/bin/env bash
# The GPU check on a CUDA machine: the project's own requirements plus jax[cuda12] (nothing
# else), then benchmarks/gpu.py (the B/16 224 px CLEF step in bf16: img/s, MFU; the default
# job's wall time). Arguments go to gpu.py, e.g. `bash benchmarks/gpu.sh --batch_size=128`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements.txt "jax[cuda12]>=0.10.2,<0.11"
python -c "import jax; d = jax.devices()[0]; assert d.platform == 'gpu', d; print(jax.devices())"
python benchmarks/gpu.py "$@"
