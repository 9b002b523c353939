#!/usr/bin/env bash
# Time to ready, measured: loads a model folder cold (page cache of its files dropped) and warm, copied and memory-mapped,
# next to the floor of reading the same files with cat, then starts `serve` and times it to /readyz 200.
# Usage: bench/load/run.sh [MODEL_DIR]   (default: a klein-4B random-weight folder, written on first use under $BENCH_DIR)
# Needs: the .NET SDK, curl, GNU dd (drops a file's page cache with iflag=nocache: no root needed), /usr/bin/time.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bench=${BENCH_DIR:-$root/bench/load/out}
model=${1:-$bench/klein-4b}
mkdir -p "$bench"
dotnet build -c Release "$root/src/InferenceServer.Server" -v q -nologo >/dev/null
bin=$root/src/InferenceServer.Server/bin/Release/net10.0/linux-x64/inference-server
[ -f "$model/inference-server.json" ] || "$bin" random-checkpoint --preset klein-4b --out "$model"
files=$(find "$model" -type f -name '*.safetensors' | sort)

drop() { for f in $files; do dd if="$f" iflag=nocache count=0 status=none; done; }
floor() { /usr/bin/time -f "%e" cat $files 2>&1 >/dev/null | tail -1; }

echo "model $model: $(du -shL $model | cut -f1), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM"

# A cold read's speed varies from run to run (the host's own cache): each cold load is paired with a cat floor taken just before.
for mmap in off on; do
  for state in cold warm; do
    echo
    if [ $state = cold ]; then drop; echo "cat floor, cold: $(floor) s"; drop; else echo "cat floor, warm: $(floor) s"; fi
    echo "== load --mmap $mmap, $state page cache"
    /usr/bin/time -f "process peak RSS %M KB, wall %e s" "$bin" inspect --timing "$model" --device cpu --mmap $mmap 2>&1 | grep -v '^\s*$'
  done
done

echo; echo "== serve, to /readyz 200 (cold page cache, --mmap auto)"
drop; echo "cat floor, cold: $(floor) s"; drop
port=$((20000 + RANDOM % 20000))
log=$bench/serve.log
start=$(date +%s.%N)
"$bin" serve --model "$model" --http-port $port --grpc-port 0 --bind 127.0.0.1 --dtype bf16 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/readyz)" = 200 ]; do
  kill -0 $pid 2>/dev/null || { echo "serve exited:"; tail -20 "$log"; exit 1; }
  sleep 0.2
done
ready=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "ready after $ready s (process start to /readyz 200); from its log:"
grep -E "loaded in|warm in|ready .* after start" "$log" | sed 's/^/  /'
kill -TERM $pid; wait $pid || true
