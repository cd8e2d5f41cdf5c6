#!/usr/bin/env bash
# Stop the server started by s3-up.sh: SIGTERM, then SIGKILL if it has not exited in time
# (DGR2_S3_STOP_TIMEOUT seconds, default 15). Safe to run when nothing is running.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=infra/local/s3-lib.sh
source "$here/s3-lib.sh"

if pid="$(running_pid)"; then
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + ${DGR2_S3_STOP_TIMEOUT:-15}))
  while running_pid >/dev/null && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if running_pid >/dev/null; then
    log "pid $pid ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while running_pid >/dev/null; do
      sleep 0.1
    done
  fi
  log "stopped (pid $pid)"
else
  log "not running"
fi

# weed leaves a unix socket in /tmp per port it served, named after the port, and does not
# remove them on exit.
if [[ -f "$S3_PORTSFILE" ]]; then
  while read -r port; do
    rm -f /tmp/seaweedfs-*-"$port".sock
  done <"$S3_PORTSFILE"
  rm -f "$S3_PORTSFILE"
fi
