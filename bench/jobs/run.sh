#!/usr/bin/env bash
# Durable-job figures on this machine (tiny random model, so the engine is not the bottleneck):
#   1. SQLite, one server: loadgen jobs (submit throughput, drain, claim time, latency added over a live request), db size
#   2. PostgreSQL, one server: the same
#   3. PostgreSQL, three replicas: one SIGKILLed while it holds jobs; seconds until its jobs are back in the queue
# Usage: bash bench/jobs/run.sh [JOBS=10000]    (needs Debian's postgresql package; runs initdb as `postgres` when root)
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS=${1:-10000}
WORK=$(mktemp -d /tmp/jobs-bench-XXXX)
trap 'pkill -f "jobs-bench-replica" || true; [ -n "${PGBIN:-}" ] && $AS $PGBIN/pg_ctl -D $WORK/pg -m immediate stop >/dev/null 2>&1 || true' EXIT

dotnet build -c Release src/InferenceServer.Server -v q -nologo >/dev/null
dotnet build -c Release bench/InferenceServer.LoadGen -v q -nologo >/dev/null
SERVER=src/InferenceServer.Server/bin/Release/net10.0/linux-x64/inference-server.dll
LOADGEN=bench/InferenceServer.LoadGen/bin/Release/net10.0/linux-x64/loadgen.dll

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
AS=""; [ "$(id -u)" = 0 ] && { chown postgres:postgres "$WORK"; AS="runuser -u postgres --"; }
$AS $PGBIN/initdb -D $WORK/pg -A trust -U postgres --no-sync >/dev/null
$AS $PGBIN/pg_ctl -D $WORK/pg -l $WORK/pg.log -w -o "-p 15439 -c listen_addresses=127.0.0.1 -k $WORK" start >/dev/null
psql() { command psql -h 127.0.0.1 -p 15439 -U postgres -Atc "$@"; }

# serve NAME STORE PORT-SUFFIX [extra...]: a replica in the background, waits for /readyz
serve() {
  local name=$1 store=$2 n=$3; shift 3
  dotnet $SERVER serve --bind 127.0.0.1 --http-port 1809$n --grpc-port 1506$n --jobs "$store" --replica-id "jobs-bench-replica-$name" "$@" \
    > $WORK/$name.log 2>&1 &
  for _ in $(seq 1 120); do curl -sf localhost:1809$n/readyz >/dev/null && return; sleep 1; done
  echo "replica $name never became ready"; tail $WORK/$name.log; exit 1
}

echo "== SQLite, one server, $JOBS jobs"
serve sqlite "sqlite:$WORK/jobs.db" 1
dotnet $LOADGEN jobs --target http://127.0.0.1:15061 --http http://127.0.0.1:18091 --jobs $JOBS 2>/dev/null
echo "database: $(du -cb $WORK/jobs.db* | tail -1 | cut -f1) bytes for $(sqlite3 $WORK/jobs.db 'select count(*) from jobs' 2>/dev/null || echo '?') jobs"
pkill -f jobs-bench-replica-sqlite; sleep 2

echo "== PostgreSQL, one server, $JOBS jobs"
psql "create database one" >/dev/null
serve pg "postgres://postgres@127.0.0.1:15439/one" 2
dotnet $LOADGEN jobs --target http://127.0.0.1:15062 --http http://127.0.0.1:18092 --jobs $JOBS 2>/dev/null
echo "database: $(psql "select pg_database_size('one')") bytes for $(command psql -h 127.0.0.1 -p 15439 -U postgres -d one -Atc 'select count(*) from jobs') jobs"
pkill -f jobs-bench-replica-pg; sleep 2

echo "== PostgreSQL, three replicas, one SIGKILLed while it holds jobs (default 30 s lease)"
psql "create database three" >/dev/null
for i in 1 2 3; do serve k$i "postgres://postgres@127.0.0.1:15439/three" $((i + 2)); done
( sleep 15; date +%s.%N > $WORK/killed; pkill -9 -f jobs-bench-replica-k2 ) &
dotnet $LOADGEN jobs --target http://127.0.0.1:15063 --http http://127.0.0.1:18093 --jobs 1500 --latency-samples 5 2>/dev/null | grep -E "drain|claim"
killed=$(cat $WORK/killed)
back=$(grep -h "lost their replica's lease" $WORK/k1.log $WORK/k3.log | head -1 | cut -d' ' -f1)
echo "killed at $(date -d @$killed +%T.%3N); its jobs back in the queue at $back (the other replicas kept running the rest meanwhile)"
