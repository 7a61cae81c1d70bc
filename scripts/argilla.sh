#!/usr/bin/env bash
# A real Argilla 2.8 server on loopback for development and tests: `scripts/argilla.sh install|start|stop|status`.
# Search engine: noida-db's Elasticsearch-compatible binary (no Elasticsearch can be installed here); Redis from
# Debian. Users of the toolkit point RECOT_ARGILLA_URL / RECOT_ARGILLA_API_KEY at their own Argilla instead.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${ARGILLA_VENV:-$ROOT/.venv-argilla}
STATE=${ARGILLA_STATE:-$ROOT/out/argilla}
PORT=${ARGILLA_PORT:-6900}
ES_PORT=${ARGILLA_ES_PORT:-9201}
REDIS_PORT=${ARGILLA_REDIS_PORT:-6380}
API_KEY=argilla.apikey

export ARGILLA_HOME_PATH=$STATE/home
export ARGILLA_DATABASE_URL="sqlite+aiosqlite:///$STATE/home/argilla.db?check_same_thread=False"
export ARGILLA_SEARCH_ENGINE=elasticsearch ARGILLA_ELASTICSEARCH=http://127.0.0.1:$ES_PORT
export ARGILLA_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

install() {
  command -v redis-server >/dev/null || apt-get install -y -q redis-server >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
  if [ ! -x "$VENV/bin/argilla_server" ] && [ ! -f "$VENV/.installed" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -c "$ROOT/scripts/argilla-constraints.txt" argilla-server==2.8.0 argilla==2.8.0 noida-db==0.2.3
    touch "$VENV/.installed"
  fi
}

alive() {  # alive NAME: its pid file names a running process (a pid file of a dead one is removed)
  local file="$STATE/$1.pid"
  [ -f "$file" ] || return 1
  local state; state=$(ps -o stat= -p "$(cat "$file")" 2>/dev/null || true)
  if [ -n "$state" ] && [ "${state:0:1}" != Z ]; then return 0; fi  # a zombie (no init reaps it here) is dead
  rm -f "$file"
  return 1
}

up() {  # up NAME COMMAND...: start it in a process group of its own (pid = group id in $STATE/NAME.pid), unless it runs
  local name=$1; shift
  if alive "$name"; then echo "argilla.sh: $name already runs (pid $(cat "$STATE/$name.pid"))"; return 0; fi
  setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "argilla.sh: $what did not answer within ${limit}s; see $STATE/*.log" >&2
  return 1
}

start() {  # idempotent: starts what does not run (after a crash: only what died), cleans dead pid files
  install
  mkdir -p "$STATE/home" "$STATE/search"
  if status >/dev/null 2>&1 && alive worker; then echo "Argilla already answers at http://127.0.0.1:$PORT"; return 0; fi
  up redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no
  local engine; engine=$(ls "$VENV"/lib/python3*/site-packages/noida_db/noida-db)
  up search "$engine" start --host 127.0.0.1 --only elasticsearch --elasticsearch-port "$ES_PORT" --data-dir "$STATE/search"
  wait_for 60 "the search engine" curl -sf "http://127.0.0.1:$ES_PORT"
  if ! alive server; then
    "$VENV/bin/python" -m argilla_server database migrate >"$STATE/migrate.log" 2>&1
    "$VENV/bin/python" -m argilla_server database users create_default --quiet >>"$STATE/migrate.log" 2>&1 || true
  fi
  up server "$VENV/bin/python" -m argilla_server start --host 127.0.0.1 --port "$PORT"
  up worker "$VENV/bin/python" -m argilla_server worker --num-workers 1
  wait_for 120 "the Argilla server" status
  echo "Argilla at http://127.0.0.1:$PORT (owner argilla / 1234, API key $API_KEY)"
}

stop() {  # every process group start made: TERM, then KILL what is left after 15 s
  local name pid
  for name in worker server search redis; do
    [ -f "$STATE/$name.pid" ] || continue
    pid=$(cat "$STATE/$name.pid")
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 15); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$STATE/$name.pid"
  done
}

status() { curl -sf -H "X-Argilla-Api-Key: $API_KEY" "http://127.0.0.1:$PORT/api/v1/me"; }

case "${1:-start}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: scripts/argilla.sh install|start|stop|status" >&2; exit 2 ;;
esac
