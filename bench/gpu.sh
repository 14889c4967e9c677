#!/usr/bin/env bash
# The CUDA path, measured in one call on a machine with a GPU (installs nothing beyond the
# project): the pool and the video flow with model.device=cuda on generated data, each with
# its bare-forward bound, while nvidia-smi samples GPU utilisation every 0.5 s.
#   bash bench/gpu.sh [--quick]        ->  bench/gpu-results.json and a summary on stdout
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/gpu-results.json}
QUICK=${1:-}
command -v nvidia-smi >/dev/null || { echo "bench/gpu.sh: no nvidia-smi: not a CUDA machine" >&2; exit 2; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
SMI=$(mktemp)
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$SMI" &
SMI_PID=$!
trap 'kill $SMI_PID 2>/dev/null || true; rm -f "$SMI"' EXIT
if [ "$QUICK" = "--quick" ]; then IMAGES=1408; MINUTES=3; else IMAGES=5632; MINUTES=30; fi
POOL=$("$PY" bench/bench_pool.py --device cuda --images "$IMAGES" --batch-size 256 | tail -n 40)
VIDEO=$("$PY" bench/bench_video.py --device cuda --minutes "$MINUTES" --chunk-frames 128 | tail -n 1)
kill $SMI_PID 2>/dev/null || true
"$PY" - "$SMI" "$OUT" <<PYEOF
import json, statistics, sys
pool = json.loads('''$POOL'''[ '''$POOL'''.index("{"): ])
video = json.loads('''$VIDEO''')
util = [float(l.split(",")[1]) for l in open(sys.argv[1]) if l.count(",") >= 2]
result = {
    "pool_images_per_s": pool.get("flow_images_per_s"),
    "pool_bound_images_per_s": pool.get("bound_images_per_s"),
    "pool_ratio": pool.get("ratio"),
    "video_s_per_s": video.get("throughput"),
    "video_ratio": video.get("ratio"),
    "gpu_util_mean_pct": round(statistics.mean(util), 1) if util else None,
    "gpu_util_p90_pct": round(sorted(util)[int(0.9 * len(util))], 1) if util else None,
    "pool": pool, "video": video,
}
json.dump(result, open(sys.argv[2], "w"), indent=2)
print(json.dumps({k: v for k, v in result.items() if k not in ("pool", "video")}, indent=2))
PYEOF
