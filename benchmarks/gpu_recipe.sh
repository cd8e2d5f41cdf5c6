#!/usr/bin/env bash
# The device side of benchmarks/gpu_recipe.py: one call, at most 9 minutes, tables back in $OUT.
#
# Prepared here first (see benchmarks/gpu_recipe.py):
#   python benchmarks/gpu_recipe.py prepare --config configs/small.yaml
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pydantic==2.* pydantic-core annotated-types typing-inspection
# (keep the pydantic-core version that the downloaded pydantic pins.)
# Then the device call carries [".dgr2/gpu", ".whl"] and runs: bash benchmarks/gpu_recipe.sh
set -euo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 530 python3 benchmarks/gpu_recipe.py run --config configs/small.yaml --out "${OUT:-.dgr2/gpu/results}" "$@"
