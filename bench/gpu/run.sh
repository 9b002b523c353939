#!/usr/bin/env bash
# Run THERE (a GPU machine with PyTorch + CUDA, no dotnet, no package registry), from the folder publish.sh wrote
# (or with APP=that folder). Results go to $OUT (default ./gpu-out):
#   env.txt       torch / CUDA / GPU / driver versions
#   ldd.txt       `ldd -r libLibTorchSharp.so` against torch's lib dir, and a verdict (undefined symbols = ABI mismatch)
#   bench-*.json  one `inference-server bench` per size x batch x dtype; bench-*.log its console output
# Knobs (environment): SIZES ("1024x1024 2048x2048"), BATCHES ("1 4"), DTYPES ("bf16 fp8"), STEPS (4), RUNS (3),
# WARMUP (1), MODEL (a model folder; default: a klein-4B random checkpoint written to $WORK/klein-4b once),
# WORK (/tmp/inference-bench), TIMEOUT (seconds per bench, 540), DEVICE (cuda; cpu for a dry run of this script).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APP=${APP:-$here}
[ -x "$APP/inference-server" ] || APP=${APP%/}/artifacts/gpu/inference-server
[ -x "$APP/inference-server" ] || { echo "run.sh: no inference-server in $APP (run bench/gpu/publish.sh first, set APP)" >&2; exit 1; }
OUT=${OUT:-$PWD/gpu-out}
WORK=${WORK:-/tmp/inference-bench}
SIZES=${SIZES:-"1024x1024 2048x2048"}
BATCHES=${BATCHES:-"1 4"}
DTYPES=${DTYPES:-"bf16 fp8"}
STEPS=${STEPS:-4}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
TIMEOUT=${TIMEOUT:-540}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT" "$WORK"
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$OUT/run.txt"; }

# 1. Where PyTorch keeps libtorch.
torch_dir=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))') || { echo "run.sh: python3 cannot import torch" >&2; exit 1; }
TORCH_LIB="$torch_dir/lib"
python3 - > "$OUT/env.txt" 2>&1 <<'PY'
import torch, platform
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)
print("python", platform.python_version(), "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >> "$OUT/env.txt" 2>&1 || true
say "torch lib: $TORCH_LIB; $(head -1 "$OUT/env.txt")"

# 2. Symbol compatibility of TorchSharp's bridge (built against libtorch 2.10) with this libtorch.
bridge="$APP/libLibTorchSharp.so"
LD_LIBRARY_PATH="$TORCH_LIB" ldd -r "$bridge" > "$OUT/ldd.txt" 2>&1
undefined=$(grep -c 'undefined symbol' "$OUT/ldd.txt")
missing_libs=$(grep -c '=> not found' "$OUT/ldd.txt")
versions=$(grep -o "version \`[^']*' not found" "$OUT/ldd.txt" | sort -u | tr '\n' ' ')
{
  echo "---"
  echo "undefined symbols: $undefined; libraries not found: $missing_libs; missing versions: ${versions:-none}"
  if [ "$undefined" -gt 0 ]; then
    echo "first undefined symbols (demangled):"
    grep 'undefined symbol' "$OUT/ldd.txt" | sed 's/undefined symbol: \([^ \t]*\).*/\1/' | head -20 | (command -v c++filt >/dev/null && c++filt || cat)
  fi
} >> "$OUT/ldd.txt"
say "ldd -r libLibTorchSharp.so: $undefined undefined symbols, $missing_libs libraries not found, versions missing: ${versions:-none} (GLIBCXX ones are marked weak by the app at start)"
[ "$missing_libs" -eq 0 ] || { say "a library the bridge needs is not in $TORCH_LIB: see ldd.txt"; exit 1; }
[ "$undefined" -eq 0 ] || say "WARNING: this libtorch lacks symbols TorchSharp 0.107 binds (libtorch 2.10 expected); calls into them will fail: see ldd.txt"

export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export DOTNET_gcServer=0 DOTNET_TieredPGO=0

# 3. A klein-4B model folder with random weights (real shapes, real cost), written once.
MODEL=${MODEL:-$WORK/klein-4b}
if [ ! -f "$MODEL/inference-server.json" ]; then
  say "writing a klein-4B random checkpoint to $MODEL"
  "$APP/inference-server" random-checkpoint --preset klein-4b --layout bfl --dtype bf16 --out "$MODEL" > "$OUT/random-checkpoint.log" 2>&1 \
    || { say "random-checkpoint failed: see random-checkpoint.log"; tail -5 "$OUT/random-checkpoint.log"; exit 1; }
  say "checkpoint written ($(du -sh "$MODEL" | cut -f1))"
fi

# 4. The benchmarks.
status=0
for dtype in $DTYPES; do
  for size in $SIZES; do
    for batch in $BATCHES; do
      name="bench-$size-b$batch-$dtype"
      say "$name"
      timeout "$TIMEOUT" "$APP/inference-server" bench --model "$MODEL" --size "$size" --steps "$STEPS" --batch "$batch" --dtype "$dtype" \
        --runs "$RUNS" --warmup "$WARMUP" --device "$DEVICE" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
      rc=$?
      if [ $rc -ne 0 ]; then
        if grep -q "not available in this build" "$OUT/$name.log"; then
          say "$dtype: not available in this build; skipped"   # 8-bit weights: not a failure of the procedure
          break 2
        fi
        say "$name: exit $rc: $(tail -1 "$OUT/$name.log")"
        status=1
        continue
      fi
      python3 - "$OUT/$name.json" <<'PY' | tee -a "$OUT/run.txt"
import json, sys
r = json.load(open(sys.argv[1]))
st = {s["stage"]: s for s in r["stages"]}
d = r["dit"]
print(f'  {r["size"]} b{r["batch"]} {r["dtype"]}: wall p50 {st["wall"]["p50_ms"]:.0f} ms, text {st["text_encode"]["p50_ms"]:.0f} ms, '
      f'denoise {st["denoise"]["p50_ms"]:.0f} ms ({st["dit_step"]["p50_ms"]:.1f} ms/step), DiT {d["tflops_mean"]:.0f} TFLOP/s = '
      f'{100 * d["tflops_mean"] / d["peak_tflops"]:.0f}% of the measured {d["peak_tflops"]:.0f}')
PY
    done
  done
done
say "done (exit $status); results in $OUT"
exit $status
