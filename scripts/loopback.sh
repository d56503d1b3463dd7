#!/usr/bin/env bash
# Runs a command with DDS confined to loopback (see README, "DDS stays on loopback"):
#   - inside a private network namespace (unshare -n) where only `lo` exists, when the machine
#     allows it; otherwise with the environment variables alone (said so on stderr);
#   - ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (Jazzy) and ROS_LOCALHOST_ONLY=1 (Humble);
#   - a ROS_DOMAIN_ID of this run's own unless one is set, so parallel runs never cross.
# Usage: bash scripts/loopback.sh COMMAND [ARGS...]
set -euo pipefail
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_LOCALHOST_ONLY=1
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( 1 + $$ % 100 ))}

if [ "${LIGHTMER_NO_NETNS:-0}" != 1 ] && unshare -n true 2>/dev/null; then
  echo "[loopback] private network namespace, ROS_DOMAIN_ID=$ROS_DOMAIN_ID" >&2
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' bash "$@"
else
  echo "[loopback] 'unshare -n' refused here: relying on ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST" \
       "and ROS_LOCALHOST_ONLY=1 alone, ROS_DOMAIN_ID=$ROS_DOMAIN_ID" >&2
  exec "$@"
fi
