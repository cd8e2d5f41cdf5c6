# Shared by s3-up.sh and s3-down.sh (sourced, not run): where the local S3 server keeps its
# state, and how to tell whether the process named in its pidfile is still ours.

S3_STATE="${DGR2_HOME:-.dgr2}/s3"
S3_PIDFILE="$S3_STATE/weed.pid"
S3_LOG="$S3_STATE/weed.log"
# The ports in use, one a line, so s3-down can remove the unix sockets weed leaves behind.
S3_PORTSFILE="$S3_STATE/ports"

# The server's settings (s3-up.sh's header says what each variable means).
S3_BUCKETS="${DGR2_S3_BUCKETS:-dgr2}"
S3_PORT="${DGR2_S3_PORT:-8333}"
S3_MASTER_PORT="${DGR2_S3_MASTER_PORT:-9333}"
S3_VOLUME_PORT="${DGR2_S3_VOLUME_PORT:-9340}"
# Not weed's default 8888, which Jupyter takes.
S3_FILER_PORT="${DGR2_S3_FILER_PORT:-8388}"
S3_ADMIN_PORT="${DGR2_S3_ADMIN_PORT:-23646}"

log() { echo "$(basename "$0"): $*" >&2; }

# Fills the array WEED_MINI_ARGS with `weed mini`'s arguments for these settings, data in $1.
# One definition for s3-up.sh and tests/unit/test_compose.py, which checks that
# infra/compose.yaml runs the same server.
# -ip sets the address weed advertises, -ip.bind the one it listens on; without both it
# advertises a guessed address and listens on all interfaces. gRPC ports are given explicitly as
# HTTP + 10000 (weed's convention), except the admin one: its embedded worker dials admin + 10000
# whatever -admin.port.grpc says. Iceberg and Lance endpoints are unused, so not opened.
# Buckets are not auto-created on first write, so a misspelt bucket fails as it would on AWS.
weed_mini_args() {
  WEED_MINI_ARGS=(
    -dir="$1"
    -ip=127.0.0.1 -ip.bind=127.0.0.1
    -master.telemetry=false -webdav=false -admin.ui=false
    -bucket="$S3_BUCKETS" -s3.autoCreateBucket=false
    -s3.port="$S3_PORT" -s3.port.grpc="$((S3_PORT + 10000))"
    -master.port="$S3_MASTER_PORT" -master.port.grpc="$((S3_MASTER_PORT + 10000))"
    -volume.port="$S3_VOLUME_PORT" -volume.port.grpc="$((S3_VOLUME_PORT + 10000))"
    -filer.port="$S3_FILER_PORT" -filer.port.grpc="$((S3_FILER_PORT + 10000))"
    -admin.port="$S3_ADMIN_PORT"
    -s3.port.iceberg=0 -s3.port.lance=0
  )
}

# Prints the server's pid if the pidfile names a live weed process; a pidfile whose process is
# gone (or whose pid now belongs to something else) is stale and removed. A zombie counts as gone:
# where nothing reaps orphans it would otherwise look alive forever.
running_pid() {
  [[ -f "$S3_PIDFILE" ]] || return 1
  local pid comm stat
  pid="$(<"$S3_PIDFILE")"
  if [[ "$pid" =~ ^[0-9]+$ ]] && read -r comm stat < <(ps -o comm=,stat= -p "$pid" 2>/dev/null) \
    && [[ "$comm" == weed && "$stat" != Z* ]]; then
    echo "$pid"
    return 0
  fi
  rm -f "$S3_PIDFILE"
  return 1
}
