#!/usr/bin/env bash
# Runs a command with DDS confined to loopback (see README, "DDS stays on loopback"):
#   - inside a private network namespace (unshare -n) where only `lo` exists, when the machine
#     allows it; otherwise with the environment variables alone (said so on stderr);
#   - ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, or ROS_LOCALHOST_ONLY=1 on Humble (ROS_DISTRO),
#     only the one the distribution reads (Jazzy warns on every start when the other is set);
#   - a ROS_DOMAIN_ID of this run's own unless one is set, so parallel runs never cross.
# Usage: bash scripts/loopback.sh COMMAND [ARGS...]
set -euo pipefail
if [ "${ROS_DISTRO:-}" = humble ]; then
  export ROS_LOCALHOST_ONLY=1; what=ROS_LOCALHOST_ONLY=1
else
  export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST; what=ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
fi
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( 1 + $$ % 100 ))}

if [ "${LIGHTMER_NO_NETNS:-0}" != 1 ] && unshare -n true 2>/dev/null; then
  echo "[loopback] private network namespace, ROS_DOMAIN_ID=$ROS_DOMAIN_ID" >&2
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' bash "$@"
else
  echo "[loopback] 'unshare -n' refused here: relying on $what alone," \
       "ROS_DOMAIN_ID=$ROS_DOMAIN_ID" >&2
  exec "$@"
fi
