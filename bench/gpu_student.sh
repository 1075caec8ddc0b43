#!/usr/bin/env bash
# Student vs teacher with a GPU's budget: more clips, GPU-sized batches, then both scored on
# unseen clips. Usage: bench/gpu_student.sh [MINUTES] [TRAIN_CLIPS] [DEVICE]
# (the lent GPU machine has opencv without ximgproc, so the teacher uses SLIC superpixels there)
set -euo pipefail
MIN=${1:-3}; CLIPS=${2:-30}; DEV=${3:-cuda}; W=${WORK:-/tmp/mm_gpu}
mkdir -p "$W"
cat > "$W/cfg.yaml" <<YAML
streamer: {motion: {superpixels: ${SUPERPIXELS:-slic}}}
learner:
  train: {batch: ${BATCH:-256}, device: $DEV}
  crops: {size: ${CROP:-224}, per_frame: 4}
  bootstrap: {enabled: false}
YAML
PY=${PYTHON:-python3}
$PY -m motionmask.cli synth --out "$W/train" --seed 100 --clips "$CLIPS" --quiet
$PY -m motionmask.cli synth --out "$W/test" --seed 7 --clips 10 --quiet
$PY -m motionmask.cli train "$W/train" --out "$W/run" --config "$W/cfg.yaml" --minutes "$MIN" --steps 0 --quiet
$PY - "$W" <<'PYEOF'
import json, sys
from motionmask.config import load_config
from learner.evaluate import evaluate_student
w = sys.argv[1]
cfg = load_config(f"{w}/cfg.yaml")
r = evaluate_student(f"{w}/run/checkpoints/last.pt", f"{w}/test", device=cfg.learner.train.device, streamer_cfg=cfg.streamer)
out = {k: r[k] for k in ("student", "teacher", "step", "clips") if k in r}
print(json.dumps(out, indent=1, default=str))
PYEOF
