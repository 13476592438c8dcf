#!/usr/bin/env bash
# The synthetic SSOD benchmark on a lent GPU: every method/detector pair in its own process,
# concurrently (one small model uses a sliver of an H100; the CPU side is the bottleneck, so
# parallel runs cost little wall time each). Same recipe base, seed and iterations for all.
#   bash benchmarks/gpu_synthetic.sh ITERS PAIR [PAIR ...]
# Results: $OUT/synthetic.json (merged) and $OUT/runs.tar.gz (metrics.jsonl + config.yaml).
set -uo pipefail
ITERS=$1; shift
PY=python3
$PY -m pip install --no-deps --no-index --find-links .gpu_wheels .gpu_wheels/*.whl -q >/dev/null 2>&1
$PY -m pip install --no-deps --no-build-isolation -e . -q >/dev/null 2>&1
export SSODKIT_CACHE_DIR=/tmp/ssodkit_cache OMP_NUM_THREADS=1
$PY -c "from ssodkit.data.synthetic import ensure_synthetic; ensure_synthetic()"
mkdir -p /tmp/res
for pair in "$@"; do
  name=${pair/\//_}
  timeout ${BENCH_TIMEOUT:-540} $PY benchmarks/run_synthetic.py --pairs "$pair" --iters "$ITERS" \
    --set data.num_workers=1 --set train.log_interval=50 --runs-dir /tmp/bench_runs \
    --results /tmp/res/$name.json > /tmp/res/$name.log 2>&1 &
done
wait
$PY - <<'PY'
import json, glob, os
merged = {}
for f in sorted(glob.glob("/tmp/res/*.json")):
    merged.update(json.load(open(f)))
json.dump(merged, open(os.path.join(os.environ["OUT"], "synthetic.json"), "w"), indent=2)
for k, v in sorted(merged.items()):
    print(f"{k:28s} mAP {100*(v['map'] or 0):5.1f}  student {100*(v['student_map'] or 0):5.1f}  {v['sec_per_iter']:.3f} s/it  {v['iters']} it")
PY
for f in /tmp/res/*.log; do echo "== $f"; grep -v Warning "$f" | tail -2; done
tar czf $OUT/runs.tar.gz -C /tmp bench_runs --exclude='*.pt' --exclude='eval' 2>/dev/null
