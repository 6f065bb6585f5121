#!/usr/bin/env bash
# End to end: `ray start --head` + `ray job submit` (through cluster/submit.sh) on this machine,
# with token authentication on, a short FIND run on the simulated backend. `make test` runs it.
# The head runs in its own temp dir and only its processes are stopped (not other Ray clusters).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/${BIN:-.venv/bin}:$PATH"
tmp=$(mktemp -d /tmp/frjob.XXXXXX)
cleanup() {
    pkill -f "$tmp" 2>/dev/null || true
    sleep 1
    pkill -9 -f "$tmp" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
dashboard=$(free_port)
# Every port the head's agents listen on is a free one too: with their defaults, a second Ray
# cluster on this machine (a local training run) leaves this head with no job agent.
agent_ports=(--dashboard-agent-listen-port="$(free_port)" --dashboard-agent-grpc-port="$(free_port)"
    --metrics-export-port="$(free_port)" --runtime-env-agent-port="$(free_port)")
export RAY_AUTH_MODE=token  # the head, the job driver and the submitting client all use the token
# ... this check's own token: it needs no ~/.ray/auth_token (a fresh CI home has none)
RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
export RAY_AUTH_TOKEN

ray start --head --port="$port" --dashboard-port="$dashboard" "${agent_ports[@]}" --num-cpus=2 \
    --temp-dir="$tmp" --disable-usage-stats >"$tmp/ray-start.log" 2>&1 \
    || { cat "$tmp/ray-start.log"; exit 1; }

RAY_ADDRESS="http://127.0.0.1:$dashboard" CONFIG=configs/shapes.yaml cluster/submit.sh \
    model.backend=simulated model.latency_s=0.05 reward.name=brightness \
    "train.prompts=[a,b]" train.samples_per_prompt=4 train.iterations=3 \
    eval.samples_per_prompt=2 ray.rollouts_per_task=4 "train.out_dir=$tmp/run"

grep -q "| issued | 24 |" "$tmp/run/report.md" || { echo "job wrote no report" >&2; exit 1; }
echo "ray job submit: ok ($tmp/run/report.md)"
