#!/usr/bin/env bash
# Issue 19's GPU checks, in one call of the lent GPU machine (10 minutes a call, 15 a session):
#   1. the CUDA tests: the learner (tests/test_learner_cuda.py), the multitask heads and the
#      copy-paste / hue crops (tests/test_heads.py's cuda cases)
#   2. bench.rig --device cuda on rig seed 0 for MIN minutes (the GPU recipe: batch 256, crops 224);
#      the stream is generated there first (about a minute)
#   3. ONNX Runtime's CUDA provider on the bundle that run exported, strict: it runs there, or the
#      reason is printed (the image's onnxruntime is the CPU build; onnxruntime-gpu is too large to
#      carry in a call)
# Output and JSON go to $OUT (what the device tool brings back), else /tmp/gpu_rig.
#
# The machine has torch, onnxruntime, opencv (no ximgproc: SLIC superpixels), scikit-image and
# PyYAML, not PyAV or pyzmq: carry them as wheels (.whl is git-ignored), fetched here once with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl av==18.1.0 pyzmq==27.3.0
# then run(command="bash bench/gpu_rig.sh", carry=[".whl"], timeout_s=600).
#
# Here, the same path as a smoke test on the CPU:  DEVICE=cpu MIN=0.3 QUICK=1 bash bench/gpu_rig.sh
set -uo pipefail
DEV=${DEVICE:-cuda}; MIN=${MIN:-4}; OUTDIR=${OUT:-/tmp/gpu_rig}; PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_rig: the carried wheels did not install"; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUTDIR/gpu.txt"

echo "== 1. CUDA tests"
$PY -m pytest -q -p no:cacheprovider -o addopts="--timeout=300" tests/test_learner_cuda.py tests/test_heads.py -k "cuda" -rs \
  2>&1 | tee "$OUTDIR/cuda_tests.txt" | tail -25 || status=1

echo "== 2. bench.rig --device $DEV, $MIN minutes"
QUICKARG=(); [ -n "${QUICK:-}" ] && QUICKARG=(--quick)
$PY -m bench.rig --device "$DEV" --gen-seeds "${GEN:-0}" --train-seeds 0 --minutes "$MIN" --no-id --no-real \
  "${QUICKARG[@]}" --out "$OUTDIR/rig_$DEV.json" 2>"$OUTDIR/rig_$DEV.log" | tee "$OUTDIR/rig_$DEV.md" || status=1
tail -3 "$OUTDIR/rig_$DEV.log"

echo "== 3. ONNX Runtime's CUDA provider on that bundle"
$PY - "$OUTDIR/rig_$DEV" <<'PYEOF' 2>&1 | tee "$OUTDIR/ort_cuda.txt"
import glob, sys
import numpy as np
from common.errors import UserError
from exporter.runtime import BundleRunner
exports = sorted(glob.glob(f"{sys.argv[1]}/g*/t*/exports"))
if not exports:
    sys.exit("no exported bundle from step 2")
try:
    r = BundleRunner(exports[-1], provider="cuda", strict=True, precision="fp32")
    out = r.run(np.zeros((2, r.height, r.width, 3), np.uint8))["mask"]
    print(f"ONNX Runtime ran {r.version} on {r.device.provider}: mask {out.shape}")
except UserError as e:
    print(f"ONNX Runtime CUDA: {e}")
PYEOF
exit $status
