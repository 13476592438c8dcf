#!/usr/bin/env bash
# CUDA/AMP check on a lent GPU machine: install ssodkit over the machine's torch, run the
# no-argument `ssodkit train` on CUDA (bf16 autocast by default), an fp16 run (GradScaler
# path), each short (one GPU: no NCCL run). Wheels for packages the image lacks travel in
# .gpu_wheels/ (pip download --python-version 3.12 …).
set -euo pipefail
PY=python3  # the image's python3 is the one that holds PyTorch
$PY -m pip install --no-deps --no-index --find-links .gpu_wheels .gpu_wheels/*.whl -q 2>&1 | tail -1
$PY -m pip install --no-deps --no-build-isolation -e . -q 2>&1 | tail -1
ssodkit() { $PY -m ssodkit "$@"; }
export SSODKIT_CACHE_DIR=/tmp/ssodkit_cache
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
rm -rf /tmp/synth_small /tmp/runs; ssodkit data synth --out /tmp/synth_small --n-train 200 --n-val 50 --n-unlabeled 50 > /dev/null
S=/tmp/synth_small
COMMON="--train-ann $S/annotations/train.json --train-images $S/images --val-ann $S/annotations/val.json --val-images $S/images --runs-dir /tmp/runs"
ssodkit train $COMMON --iters 60 --name bf16 --set eval.interval=60 --set train.log_interval=20 2>&1 | tail -4
ssodkit train $COMMON --iters 30 --amp fp16 --name fp16 --set eval.interval=30 --set train.log_interval=10 2>&1 | tail -3
ssodkit train $COMMON --iters 30 --method mean_teacher --unlabeled $S/annotations/unlabeled.json --set data.unlabeled_images=$S/images --set train.unlabeled_batch_size=8 --name mt --set eval.interval=30 --set train.log_interval=10 2>&1 | tail -3
grep -h '"eval"' /tmp/runs/*/metrics.jsonl | cut -c1-200 > $OUT/evals.txt || true
