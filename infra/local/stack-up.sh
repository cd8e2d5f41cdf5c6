#!/usr/bin/env bash
# Start the local service stack, every server bound to 127.0.0.1: SeaweedFS S3 (s3-up.sh), an
# MLflow tracking server that proxies artifacts to s3://mlflow/artifacts, and a Prefect server.
# Waits until each answers its health check, writes $DGR2_HOME/stack/stack.env for clients to
# source, and prints the URLs and that file's path on stdout (everything else goes to stderr).
# Servers already running are left as they are. If one fails to start, the whole stack is
# stopped and the exit status is non-zero.
#
# Environment:
#   DGR2_HOME                state lives in $DGR2_HOME/stack (default .dgr2): pidfiles, logs, databases
#   DGR2_STACK_PROFILE       local (default: SQLite files in the state directory) or production
#                            (MLflow and Prefect on Postgres)
#   DGR2_MLFLOW_BACKEND_URI  production MLflow store (default
#                            postgresql+psycopg://postgres@127.0.0.1:5432/dgr2_mlflow)
#   DGR2_PREFECT_DATABASE_URL  production Prefect database (default
#                            postgresql+asyncpg://postgres@127.0.0.1:5432/dgr2_prefect)
#                            both databases are created if missing; a password belongs in
#                            PGPASSWORD or ~/.pgpass (psycopg and asyncpg read both), not in
#                            the MLflow URL, which is on the server's command line
#   DGR2_MLFLOW_PORT, DGR2_PREFECT_PORT   defaults 5000, 4200; S3 ports as in s3-up.sh
#   DGR2_MLFLOW_WORKERS      MLflow's uvicorn workers (default 1)
#   DGR2_S3_ACCESS_KEY, DGR2_S3_SECRET_KEY  the one identity S3 accepts (default: fixed
#                            development keys)
#   DGR2_STACK_BUCKETS       buckets besides mlflow (default dgr2)
#   DGR2_MLFLOW_START_TIMEOUT, DGR2_PREFECT_START_TIMEOUT  seconds to wait for health
#                            (defaults 120 and 90; each took 35-65 s on a busy 2-core machine)
# mlflow, prefect, weed and python are looked up on PATH (`make stack-up` puts .venv/bin first).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=infra/local/stack-lib.sh
source "$here/stack-lib.sh"

fail() {
  log "$*"
  exit 1
}

# Stops whatever runs and fails; with a log, its tail goes to stderr first.
abort() {
  local problem="$1" logfile="${2:-}"
  [[ -n "$logfile" && -f "$logfile" ]] && tail -n 40 "$logfile" >&2
  "$here/stack-down.sh"
  fail "$problem${logfile:+ (log above, full log in $logfile)}"
}

[[ "$STACK_PROFILE" == local || "$STACK_PROFILE" == production ]] \
  || fail "DGR2_STACK_PROFILE must be local or production, not '$STACK_PROFILE'"
for program in mlflow prefect python curl; do
  command -v "$program" >/dev/null \
    || fail "$program not found on PATH: install the project (make install) and put .venv/bin on PATH"
done
if [[ -f "$STACK_PROFILE_FILE" && "$(<"$STACK_PROFILE_FILE")" != "$STACK_PROFILE" ]]; then
  fail "the stack in $STACK_HOME runs the $(<"$STACK_PROFILE_FILE") profile: stop it first (make stack-down)"
fi

mkdir -p "$STACK_LOGS" "$STACK_HOME/mlflow"
echo "$STACK_PROFILE" >"$STACK_PROFILE_FILE"

if [[ "$STACK_PROFILE" == production ]]; then
  python "$here/pg-ensure-db.py" "$MLFLOW_POSTGRES_URI" "$PREFECT_POSTGRES_URL" \
    || abort "could not prepare the Postgres databases"
fi

s3_url="$(DGR2_HOME="$STACK_HOME" DGR2_S3_BUCKETS="$STACK_BUCKETS" AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" \
  AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" AWS_DEFAULT_REGION="$S3_REGION" "$here/s3-up.sh")" \
  || abort "S3 did not start (see above)"

# Starts server $1 on port $2 in a session of its own (so a terminal's signals do not reach it
# and stack-down can stop its process group), unless it already runs.
start_server() {
  local name="$1" port="$2" url pid
  if pid="$(server_pid "$name")"; then
    log "$name already running (pid $pid, log $STACK_LOGS/$name.log)"
    return 0
  fi
  # Children left behind by a server that died.
  stop_server "$name"
  # Something else on the port would answer the health check in our server's place.
  if (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    abort "port $port is already in use: stop what listens there or set DGR2_${name^^}_PORT"
  fi
  url="http://127.0.0.1:$port"
  server_command "$name"
  (
    # An ambient AWS session token or profile would spoil the S3 keys' signatures.
    unset AWS_SESSION_TOKEN AWS_PROFILE
    export "${SERVER_ENV[@]}"
    exec setsid "${SERVER_CMD[@]}"
  ) </dev/null >"$STACK_LOGS/$name.log" 2>&1 &
  echo $! >"$STACK_HOME/$name.pid"
  echo "$url" >"$STACK_HOME/$name.url"
  log "$name starting at $url (pid $!)"
}

# Waits for server $1's health check, at most $2 seconds after both were launched.
wait_healthy() {
  local name="$1" deadline=$((launched + $2)) url problem
  url="$(server_url "$name")"
  until healthy "$name" "$url"; do
    if ! server_pid "$name" >/dev/null; then
      problem="$name exited during startup"
    elif ((SECONDS >= deadline)); then
      problem="$name not healthy after $2 s"
    else
      sleep 0.5
      continue
    fi
    abort "$problem" "$STACK_LOGS/$name.log"
  done
  log "$name ready at $url (waited $((SECONDS - launched)) s)"
}

# Launched together, then waited for, so their start-ups overlap.
launched=$SECONDS
start_server mlflow "$MLFLOW_PORT"
start_server prefect "$PREFECT_PORT"
wait_healthy prefect "${DGR2_PREFECT_START_TIMEOUT:-90}"
wait_healthy mlflow "${DGR2_MLFLOW_START_TIMEOUT:-120}"

mlflow_url="$(server_url mlflow)"
prefect_url="$(server_url prefect)"
client_env "$mlflow_url" "$prefect_url" "$s3_url"
# Written whole and renamed into place, so a client never sources half a file; mktemp makes it
# owner-only, as it should be: it holds the S3 keys.
env_tmp="$(mktemp "$STACK_ENV_FILE.XXXXXX")"
{
  echo "# The local stack ($STACK_PROFILE profile), written by infra/local/stack-up.sh; stack-down.sh removes it."
  for variable in "${CLIENT_ENV[@]}"; do
    printf 'export %s=%q\n' "${variable%%=*}" "${variable#*=}"
  done
} >"$env_tmp"
mv "$env_tmp" "$STACK_ENV_FILE"

printf '%-8s %s\n' s3 "$s3_url" mlflow "$mlflow_url" prefect "$prefect_url" env "$STACK_ENV_FILE"
