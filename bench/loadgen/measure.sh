#!/usr/bin/env bash
# Serves a model (default: the embedded tiny random model), drives it over gRPC in a closed loop at concurrency 1, 4 and 16
# and in an open loop at a few Poisson rates, runs the same workload in-process (no server) as the overhead baseline,
# and draws latency-vs-load plots. Everything lands in ${OUT:-bench/loadgen/results}.
#   bench/loadgen/measure.sh [--model DIR] [--sizes 64x64] [--steps 4] [--duration 20] [--rates 5,10,20]
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL="" SIZES="64x64" STEPS=4 DURATION=20 RATES="" CONC="1,4,16" DTYPE=bf16
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2;; --sizes) SIZES="$2"; shift 2;; --steps) STEPS="$2"; shift 2;;
    --duration) DURATION="$2"; shift 2;; --rates) RATES="$2"; shift 2;; --concurrency) CONC="$2"; shift 2;;
    --dtype) DTYPE="$2"; shift 2;; *) echo "unknown option $1" >&2; exit 2;;
  esac
done
OUT="${OUT:-bench/loadgen/results}"
mkdir -p "$OUT"
dotnet build -c Release -v q src/InferenceServer.Server bench/InferenceServer.LoadGen >/dev/null 2>&1 || dotnet build -c Release src/InferenceServer.Server
dotnet build -c Release -v q bench/InferenceServer.LoadGen >/dev/null
SERVER=src/InferenceServer.Server/bin/Release/net10.0/linux-x64/inference-server.dll
LOADGEN=bench/InferenceServer.LoadGen/bin/Release/net10.0/linux-x64/loadgen.dll
HTTP_PORT=${HTTP_PORT:-18080} GRPC_PORT=${GRPC_PORT:-15051}
ARGS=(serve --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --bind 127.0.0.1 --dtype "$DTYPE")
[ -n "$MODEL" ] && ARGS+=(--model "$MODEL")
dotnet "$SERVER" "${ARGS[@]}" >"$OUT/server.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 $PID 2>/dev/null || { echo "server exited:"; tail -20 "$OUT/server.log"; exit 1; }
  sleep 0.5
done
echo "server ready (pid $PID)"
COMMON=(--sizes "$SIZES" --steps "$STEPS" --duration "$DURATION")
dotnet "$LOADGEN" closed --target "http://127.0.0.1:$GRPC_PORT" --concurrency "$CONC" "${COMMON[@]}" --label "gRPC closed loop" --json "$OUT/closed.json"
if [ -n "$RATES" ]; then
  dotnet "$LOADGEN" open --target "http://127.0.0.1:$GRPC_PORT" --rate "$RATES" "${COMMON[@]}" --label "gRPC open loop" --json "$OUT/open.json"
fi
kill -TERM $PID; wait $PID || true; trap - EXIT
TINY="${XDG_CACHE_HOME:-$HOME/.cache}/inference-server/flux2-tiny-random"
dotnet "$LOADGEN" in-process --model "${MODEL:-$TINY}" --dtype "$DTYPE" "${COMMON[@]}" --json "$OUT/in-process.json"
dotnet "$LOADGEN" plot --out "$OUT/closed-loop.png" "$OUT/closed.json" "$OUT/in-process.json"
[ -n "$RATES" ] && dotnet "$LOADGEN" plot --out "$OUT/open-loop.png" "$OUT/open.json" "$OUT/in-process.json"
echo "results in $OUT"
