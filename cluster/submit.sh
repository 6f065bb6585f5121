#!/usr/bin/env bash
# Submit a FIND training run to a running Ray cluster as a Ray job. `cluster/submit.sh -h` for use.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: cluster/submit.sh [-h] [KEY=VALUE ...]

Submits `python -m find_ray train --config $CONFIG KEY=VALUE ...` to a running Ray cluster with
`ray job submit`, uploading a snapshot of this checkout (the files git tracks or would track)
as the job's working directory, and streams the job's output until it ends.

Environment:
  RAY_ADDRESS          the cluster's dashboard / job API (default http://127.0.0.1:8265; through
                       `ray dashboard cluster/aws.yaml` or `kubectl port-forward` it is the same)
  CONFIG               training config, relative to the repo root (default configs/shapes.yaml)
  RAY_AUTH_MODE        "token" when the cluster uses token authentication
  RAY_AUTH_TOKEN       the cluster's token; if unset, the file RAY_AUTH_TOKEN_PATH names,
  RAY_AUTH_TOKEN_PATH  else ~/.ray/auth_token
The ray CLI reads the RAY_AUTH_* variables from the environment itself; this script only sets
RAY_AUTH_MODE=token when it is unset and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH is given.

Example:
  RAY_AUTH_MODE=token cluster/submit.sh model.device=cuda \
      ray.num_rollout_actors=4 ray.rollout_num_gpus=0.5
EOF
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi

# The working directory uploaded to the cluster, and what CONFIG is relative to.
cd "$(dirname "$0")/.."

config="${CONFIG:-configs/shapes.yaml}"
if [[ ! -f "$config" ]]; then
    echo "submit.sh: no config file '$config' in $(pwd)" >&2
    exit 2
fi
if ! command -v ray >/dev/null 2>&1; then
    echo "submit.sh: the ray CLI is not on PATH (pip install \"ray[default]\")" >&2
    exit 127
fi
if [[ -z "${RAY_AUTH_MODE:-}" && -n "${RAY_AUTH_TOKEN:-}${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    export RAY_AUTH_MODE=token
fi

# Ray hashes the working directory and then zips it: a file that changes in between (a log
# written into the checkout) makes the job wait for a package that was never uploaded. So the
# job gets a snapshot: the files git tracks or would track (all of them outside a git checkout).
snapshot=$(mktemp -d "${TMPDIR:-/tmp}/find-ray-submit.XXXXXX")
trap 'rm -rf "$snapshot"' EXIT
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf - | tar -xf - -C "$snapshot"
else
    tar --exclude=./.venv --exclude=./runs --exclude=./.git -cf - . | tar -xf - -C "$snapshot"
fi
cd "$snapshot"

ray job submit \
    --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
    --working-dir . \
    --runtime-env-json '{"excludes": [".venv", "runs", ".git"]}' \
    -- python -m find_ray train --config "$config" "$@"
