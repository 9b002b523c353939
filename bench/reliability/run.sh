#!/usr/bin/env bash
# One command per harness verb: builds the server and the harness (Release), then runs the verb against this checkout's
# server, or against any build given with --server (an old commit's inference-server.dll included).
#   bench/reliability/run.sh fuzz     [--requests 1000] [--api-key K] [--seed 1] [--include-slow]
#   bench/reliability/run.sh overload [--duration 30] [--multiple 5]
#   bench/reliability/run.sh faults   [--cases kill,model,disk,cli]
#   bench/reliability/run.sh soak     [--minutes 3] [--fraction 0.5]
#   bench/reliability/run.sh replay   FILE.json...
# Output: ${OUT:-bench/reliability/results/VERB}/result.json and summary.md (fuzz: replay/); exit 1 when a goal fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERB="${1:?usage: run.sh fuzz|overload|faults|soak|replay [options]}"; shift
dotnet build -c Release -v q src/InferenceServer.Server >/dev/null
dotnet build -c Release -v q bench/InferenceServer.Reliability >/dev/null
SERVER=src/InferenceServer.Server/bin/Release/net10.0/linux-x64/inference-server.dll
for a in "$@"; do [ "$a" = "--server" ] && SERVER=""; done
OUT="${OUT:-bench/reliability/results/$VERB}"
exec dotnet bench/InferenceServer.Reliability/bin/Release/net10.0/linux-x64/reliability.dll "$VERB" ${SERVER:+--server "$SERVER"} --out "$OUT" "$@"
