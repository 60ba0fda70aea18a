#!/usr/bin/env bash
# Cloud dynamic batching on a CUDA GPU: the same cloud with max_batch_size=1 and with batching,
# driven from the same machine by several load-generator processes, then WORKERS (4) cloud processes
# sharing the GPU (`--workers`: HTTP ingest beyond one process). About 4 minutes.
#
#   bash bench/gpu.sh [OUT_DIR]        (default: bench/results)
#
# Needs the project installed (`pip install --no-deps -e .` beside an existing torch works).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results}
MODEL=${MODEL:-resnet50}
CUT=${CUT:-layer2}
DURATION=${DURATION:-30}
GENERATORS=${GENERATORS:-6}        # load-generator processes
CONCURRENCY=${CONCURRENCY:-32}     # clients per generator
PER_REQUEST=${PER_REQUEST:-4}      # images per payload
PORT=${PORT:-18801}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu-machine.txt" || true

run_cloud() {  # $1 = max batch size, $2 = label, then extra cloud flags
  local batch=$1 label=$2
  shift 2
  $PY -m splitinfer cloud --model "$MODEL" --weights none --device cuda --port "$PORT" \
      --max-batch-size "$batch" --max-delay-ms 2 --max-queue 4096 --log-level warning "$@" &
  local cloud=$!
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 1; done
  local pids=()
  for g in $(seq "$GENERATORS"); do
    $PY -m splitinfer bench --target cloud --url "http://127.0.0.1:$PORT" --model "$MODEL" --cut "$CUT" \
        --codec fp16 --per-request "$PER_REQUEST" --concurrency "$CONCURRENCY" --duration "$DURATION" \
        --warmup 5 --name "$label-$g" --json "$OUT/gpu-$label-$g.json" > /dev/null &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  kill "$cloud"; wait "$cloud" || true
}

run_cloud 1 unbatched
run_cloud 256 batched
run_cloud 256 workers --workers "${WORKERS:-4}"   # several processes sharing the GPU (HTTP ingest)

$PY - "$OUT" <<'PYEOF'
import glob, json, sys
out = sys.argv[1]
rows = {}
for label in ("unbatched", "batched", "workers"):
    parts = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/gpu-{label}-*.json"))]
    rows[label] = {
        "throughput_img_s": round(sum(p["throughput_img_s"] for p in parts), 1),
        "errors": sum(p["errors"] for p in parts),
        "p50_ms": round(sorted(p["p50_ms"] for p in parts)[len(parts) // 2], 2),
        "generators": len(parts),
    }
rows["workers_vs_batched"] = round(
    rows["workers"]["throughput_img_s"] / max(rows["batched"]["throughput_img_s"], 1e-9), 2
)
rows["ratio"] = round(rows["batched"]["throughput_img_s"] / max(rows["unbatched"]["throughput_img_s"], 1e-9), 2)
json.dump(rows, open(f"{out}/gpu.json", "w"), indent=2)
print(json.dumps(rows, indent=2))
PYEOF
