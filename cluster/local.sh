#!/usr/bin/env bash
# cluster/local.sh up|down|status|env   -- a real three-node Ray cluster on one machine (loopback only).
#
#   cluster/local.sh up        head (2 CPUs) + worker_a (1 CPU) + worker_b (1 CPU), waits until 3 nodes are alive
#   cluster/local.sh status    `ray status` for this cluster (and the PIDs it owns)
#   cluster/local.sh env       the exports a client needs: eval "$(cluster/local.sh env)"
#   cluster/local.sh down      stops THIS cluster only (never `ray stop`: that kills every Ray on the machine)
#
# Then: ray job submit --address http://127.0.0.1:8275 --working-dir . -- mdkif data build ...
#
# Isolation from other Ray instances on the same machine (shared dev boxes run several):
#   * own ports: GCS, dashboard, ray-client server and, per node, node-manager / object-manager / dashboard-agent /
#     runtime-env-agent / metrics ports and a worker-port range, all in a private block below the kernel's
#     ephemeral range (Ray's defaults, 6379/8265/10001/52365, are left to whoever else runs Ray here);
#   * own temp dir (--temp-dir): sessions, logs and sockets live under $MDKIF_RAY_TMP, never /tmp/ray;
#   * own auth: Ray 2.60 turns token auth on whenever ~/.ray/auth_token exists and RAY_AUTH_MODE is unset, so
#     the mode is always set explicitly. Default `token` with a private token file (RAY_AUTH_TOKEN_PATH) made
#     here; MDKIF_RAY_AUTH=disabled turns it off. Every client must use the same settings: `env` prints them;
#   * own processes: each node runs as `ray start --block` in its own session (setsid) and its PID is recorded.
#     Ray makes that process a group leader with a reaper, so ending it ends the node's raylet, GCS, dashboard
#     and workers; `down` then sweeps what is left of those sessions and anything still naming our temp dir.
#
# Environment (all optional): MDKIF_RAY_GCS_PORT (6390), MDKIF_RAY_DASHBOARD_PORT (8275),
#   MDKIF_RAY_CLIENT_PORT (10091), MDKIF_RAY_PORT_BASE (23000; node i uses BASE+300*i .. BASE+300*i+299),
#   MDKIF_RAY_TMP (/tmp/mdkif-ray-$GCS_PORT; keep it short: Unix socket paths are capped at 107 bytes),
#   MDKIF_RAY_AUTH (token|disabled), MDKIF_RAY_HEAD_CPUS (2), MDKIF_RAY_WORKER_CPUS (1),
#   MDKIF_RAY_OBJECT_STORE_MB (512 per node), MDKIF_RAY_START_ATTEMPTS (4 per node),
#   RAY (ray binary; default: this checkout's .venv).
#
# Ray 2.60 on Linux rewrites `--node-ip-address=127.0.0.1` to the machine's primary IP
# (services.resolve_ip_for_localhost), so the nodes register under that IP and GCS/raylet ports are reachable
# from the host's network unless firewalled: one more reason for the token default. The dashboard (and so
# the Jobs API) listens on 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY="${RAY:-$ROOT/.venv/bin/ray}"
GCS_PORT="${MDKIF_RAY_GCS_PORT:-6390}"
DASH_PORT="${MDKIF_RAY_DASHBOARD_PORT:-8275}"
CLIENT_PORT="${MDKIF_RAY_CLIENT_PORT:-10091}"
PORT_BASE="${MDKIF_RAY_PORT_BASE:-23000}"
TMP="${MDKIF_RAY_TMP:-/tmp/mdkif-ray-$GCS_PORT}"
AUTH="${MDKIF_RAY_AUTH:-token}"
HEAD_CPUS="${MDKIF_RAY_HEAD_CPUS:-2}"
WORKER_CPUS="${MDKIF_RAY_WORKER_CPUS:-1}"
OBJECT_STORE_MB="${MDKIF_RAY_OBJECT_STORE_MB:-512}"   # per node; Ray's default (30% of RAM each) x3 overcommits
STATE="$TMP/local-cluster"          # PIDs, logs of `ray start`, token, env file
NODES=(head worker_a worker_b)
ADDRESS="127.0.0.1:$GCS_PORT"
DASH_URL="http://127.0.0.1:$DASH_PORT"

log() { echo "[local.sh] $*" >&2; }

# The environment every process of this cluster and every client of it shares.
auth_env() {
    echo "export RAY_AUTH_MODE=$AUTH"
    if [[ "$AUTH" == token ]]; then
        echo "export RAY_AUTH_TOKEN_PATH=$STATE/auth_token"
    fi
    echo "export RAY_ADDRESS=$DASH_URL"   # `ray job submit` / `ray status` default; jobs get their own
    echo "export MDKIF_RAY_GCS_ADDRESS=$ADDRESS"
}

load_env() {
    unset RAY_AUTH_TOKEN RAY_ADDRESS
    eval "$(auth_env)"
}

# Ports of node i: a 300-port block. Workers take BASE+20.. BASE+299 (Ray needs one port per worker process).
node_ports() {
    local i=$1 b=$((PORT_BASE + 300 * i))
    echo "--node-manager-port=$b --object-manager-port=$((b + 1))" \
        "--dashboard-agent-listen-port=$((b + 2)) --dashboard-agent-grpc-port=$((b + 3))" \
        "--runtime-env-agent-port=$((b + 4)) --metrics-export-port=$((b + 5))" \
        "--min-worker-port=$((b + 20)) --max-worker-port=$((b + 299))"
}

alive_pids() {
    local f pid
    for f in "$STATE"/*.pid; do
        [[ -e "$f" ]] || continue
        pid=$(cat "$f")
        kill -0 "$pid" 2>/dev/null && echo "$pid"
    done
    return 0
}

# Start one node as `setsid ray start --block ...` in the background and record its PID.
start_node() {
    local name=$1 i=$2
    shift 2
    # shellcheck disable=SC2046
    setsid "$RAY" start --block --node-ip-address=127.0.0.1 --temp-dir="$TMP" \
        --disable-usage-stats --object-store-memory=$((OBJECT_STORE_MB * 1024 * 1024)) \
        $(node_ports "$i") "$@" >>"$STATE/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
}

# Poll `ray status` until N nodes are alive; give up early when node NAME's `ray start` has exited.
wait_nodes() {
    local want=$1 name=$2 deadline=$((SECONDS + ${3:-120})) n
    while ((SECONDS < deadline)); do
        n=$("$RAY" status --address="$ADDRESS" 2>/dev/null | grep -c ' node_' || true)
        ((n >= want)) && return 0
        kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null || return 1
        sleep 2
    done
    return 1
}

# Start node NAME (index I) and wait until WANT nodes are alive. On a loaded machine a raylet can miss
# Ray's fixed 30 s registration wait ("node timed out during startup") or abort while its agents are still
# starting (seen: raylet "Check failed" in node_manager.cc a few seconds in): retry, logs appended.
start_and_wait() {
    local name=$1 i=$2 want=$3 attempt
    shift 3
    for ((attempt = 1; attempt <= ${MDKIF_RAY_START_ATTEMPTS:-4}; attempt++)); do
        echo "=== attempt $attempt $(date -Is)" >>"$STATE/$name.log"
        start_node "$name" "$i" "$@"
        wait_nodes "$want" "$name" 150 && return 0
        log "$name did not join (attempt $attempt); see $STATE/$name.log"
        kill -TERM "$(cat "$STATE/$name.pid")" 2>/dev/null || true
        sleep 5                     # let the failed node's processes release its ports
    done
    return 1
}

up() {
    if [[ -n "$(alive_pids)" ]]; then
        log "already up (PIDs: $(alive_pids | tr '\n' ' ')); run '$0 down' first"
        return 1
    fi
    mkdir -p "$STATE"
    chmod 700 "$TMP" "$STATE"
    if [[ "$AUTH" == token && ! -s "$STATE/auth_token" ]]; then
        # A private token: other engineers' ~/.ray/auth_token is neither read nor overwritten.
        (umask 077 && "$ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_hex(32))' >"$STATE/auth_token")
    fi
    auth_env >"$STATE/env.sh"
    load_env
    # Every node shares this checkout's venv: job drivers find `mdkif` on PATH, workers import mdkif.
    export PATH="$ROOT/.venv/bin:$PATH"
    export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
    log "head on $ADDRESS (dashboard $DASH_URL, temp dir $TMP, auth $AUTH)"
    start_and_wait head 0 1 --head --port="$GCS_PORT" --num-cpus="$HEAD_CPUS" \
        --ray-client-server-port="$CLIENT_PORT" \
        --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
        --resources='{"head": 1}' || { down; return 1; }
    # One at a time: two raylets registering at once on a busy 2-core box time out.
    start_and_wait worker_a 1 2 --address="$ADDRESS" --num-cpus="$WORKER_CPUS" \
        --resources='{"worker_a": 1}' || { down; return 1; }
    start_and_wait worker_b 2 3 --address="$ADDRESS" --num-cpus="$WORKER_CPUS" \
        --resources='{"worker_b": 1}' || { down; return 1; }
    log "up: 3 nodes; for clients: eval \"\$($0 env)\""
}

# Session ids of the nodes we started (each `setsid` made its own).
sessions() {
    local pid
    for pid in $(alive_pids); do
        ps -o sid= -p "$pid" 2>/dev/null | tr -d ' '
    done
}

# PIDs that belong to this cluster: members of our sessions, plus any process of ours naming our temp dir
# (a worker that left its session). Never matched by a program name.
owned_pids() {
    local sid
    for sid in "$@"; do
        ps -eo pid=,sid= | awk -v s="$sid" '$2 == s {print $1}'
    done
    # "$TMP" as a whole path component: /tmp/mdkif-ray-6390 must not match someone's /tmp/mdkif-ray-63901
    local tmp_re
    tmp_re="$(printf '%s' "$TMP" | sed 's/[][\.*^$()+?{}|]/\\&/g')(/|[[:space:]]|\$)"
    ps -u "$(id -u)" -o pid=,args= | grep -E -- "$tmp_re" | grep -v -e "grep -E" -e "local.sh" | awk '{print $1}'
    return 0
}

down() {
    local sids pids deadline
    sids=$(sessions | sort -u)
    # End the `ray start --block` parents first: Ray's reaper then ends each node's process group.
    for pid in $(alive_pids); do kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        # shellcheck disable=SC2086
        pids=$(owned_pids $sids | sort -u)
        [[ -z "$pids" ]] && break
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        sleep 1
    done
    # shellcheck disable=SC2086
    pids=$(owned_pids $sids | sort -u)
    if [[ -n "$pids" ]]; then
        log "force-killing leftovers: $pids"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
    rm -f "$STATE"/*.pid
    log "down (logs kept in $TMP)"
}

status() {
    load_env
    if [[ -z "$(alive_pids)" ]]; then
        log "not running (no live PIDs in $STATE)"
        return 1
    fi
    log "ray start PIDs: $(alive_pids | tr '\n' ' ')"
    "$RAY" status --address="$ADDRESS"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    env) auth_env ;;
    *)
        echo "usage: $0 up|down|status|env" >&2
        exit 2
        ;;
esac
