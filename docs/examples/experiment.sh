#!/usr/bin/env bash
# The user guide's experiment with pisctl: reserve 4 Raspberry Pis, 2 Grid'5000 servers and 1 FIT
# IoT-LAB sensor for 2 hours in one all-or-nothing booking, deploy, wait, run one command on each
# Pi and server over SSH (pinned host keys), read the sensor's experiment id, release.
# Run it after `pisctl login URL`. Needs jq. Settings through the environment:
#   HOURS (2), BIN (experiment), SSH_TYPES ("raspberry g5k"), PISEDUCE_SSH_KEY (your private key)
set -euo pipefail
HOURS=${HOURS:-2}
BIN=${BIN:-experiment}
SSH_TYPES=${SSH_TYPES:-raspberry g5k}
identity=()
[[ -n ${PISEDUCE_SSH_KEY:-} ]] && identity=(--identity "$PISEDUCE_SSH_KEY")

# COUNT free nodes of KIND for the whole slot, as AGENT/NODE lines.
pick() {
  pisctl nodes --filter "type=$1" --free "$HOURS" --json |
    jq -r --argjson n "$2" '.[:$n][] | "\(.agent)/\(.name)"'
}
mapfile -t nodes < <(pick raspberry 4; pick g5k 2; pick iot-lab 1)
if [[ ${#nodes[@]} -ne 7 ]]; then
  echo "only ${#nodes[@]} of the 7 nodes are free for $HOURS h" >&2
  exit 1
fi

booked=$(pisctl reserve --nodes "$(IFS=,; echo "${nodes[*]}")" --hours "$HOURS" --bin "$BIN" --json)
trap 'pisctl release --bin "$BIN"' EXIT   # whatever happens next, the nodes go back
echo "booked $(jq -r 'map(.key) | join(", ")' <<<"$booked")"

pisctl deploy --bin "$BIN" --wait          # a bar per node; exit 1 if any node failed

for type in $SSH_TYPES; do
  for key in $(jq -r --arg t "$type" '.[] | select(.type == $t) | .key' <<<"$booked"); do
    echo "$key answers: $(pisctl ssh "${identity[@]}" "$key" -- uname -n </dev/null)"
  done
done
pisctl status --bin "$BIN" --json |
  jq -r '.[] | select(.type == "iot-lab") | "\(.node): IoT-LAB experiment \(.connection.details.experiment_id)"'
