# shellcheck shell=bash
# Shared by stack-up.sh, stack-down.sh and stack-status.sh (sourced, not run): the stack's
# settings, where it keeps its state, each server's command line and environment, and how to
# tell whether a server is still ours. tests/unit/test_compose.py reads the command lines too,
# so infra/compose.yaml cannot drift from what the local stack runs.

STACK_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Absolute: the servers get paths from it (SQLite URI, PREFECT_HOME) and must not depend on
# the directory a later command runs in.
STACK_HOME="${DGR2_HOME:-.dgr2}/stack"
[[ "$STACK_HOME" == /* ]] || STACK_HOME="$PWD/$STACK_HOME"
STACK_LOGS="$STACK_HOME/logs"
STACK_ENV_FILE="$STACK_HOME/stack.env"
# The profile the running stack was started with.
STACK_PROFILE_FILE="$STACK_HOME/profile"
STACK_PROFILE="${DGR2_STACK_PROFILE:-local}"
STACK_STOP_TIMEOUT="${DGR2_STACK_STOP_TIMEOUT:-15}"

MLFLOW_PORT="${DGR2_MLFLOW_PORT:-5000}"
PREFECT_PORT="${DGR2_PREFECT_PORT:-4200}"
# MLflow's default is 4 uvicorn workers, each a full MLflow import; one serves a developer.
MLFLOW_WORKERS="${DGR2_MLFLOW_WORKERS:-1}"
MLFLOW_BUCKET=mlflow
MLFLOW_ARTIFACTS="s3://$MLFLOW_BUCKET/artifacts"

# Fixed development keys by default: the server listens on 127.0.0.1 only and is no AWS
# identity. They are separate from AWS_* so a developer's real AWS keys never end up here.
S3_ACCESS_KEY="${DGR2_S3_ACCESS_KEY:-dgr2-dev}"
S3_SECRET_KEY="${DGR2_S3_SECRET_KEY:-dgr2-dev-secret}"
# weed accepts any region; clients need one to sign requests.
S3_REGION=us-east-1
STACK_BUCKETS="$MLFLOW_BUCKET,${DGR2_STACK_BUCKETS:-dgr2}"
# The stack's S3 server is s3-up.sh's, with its state in $STACK_HOME/s3 (apart from a standalone
# `make s3-up`) and the stack's buckets; stack-up.sh hands s3-up.sh the same two variables.
DGR2_HOME="$STACK_HOME" DGR2_S3_BUCKETS="$STACK_BUCKETS" source "$STACK_LIB_DIR/s3-lib.sh"
S3_ENDPOINT="http://127.0.0.1:$S3_PORT"

# Production profile: both servers on Postgres, each in a database of its own (created by
# stack-up.sh if missing) so they clash neither with each other nor with the tests' databases.
MLFLOW_POSTGRES_URI="${DGR2_MLFLOW_BACKEND_URI:-postgresql+psycopg://postgres@127.0.0.1:5432/dgr2_mlflow}"
# Prefect's server needs an async driver.
PREFECT_POSTGRES_URL="${DGR2_PREFECT_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/dgr2_prefect}"

# Fills SERVER_CMD with server $1's command line and SERVER_ENV with what it runs with
# (NAME=value). S3 keys and Prefect's database URL go in the environment: ps shows command lines
# (MLflow's store URI is one, so its password belongs in PGPASSWORD or ~/.pgpass).
server_command() {
  local backend="sqlite:///$STACK_HOME/mlflow/mlflow.db"
  if [[ "$STACK_PROFILE" == production ]]; then
    backend="$MLFLOW_POSTGRES_URI"
  fi
  case "$1" in
    mlflow)
      SERVER_CMD=(mlflow server --backend-store-uri "$backend" --artifacts-destination "$MLFLOW_ARTIFACTS"
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS")
      # Proxied artifacts: only the server talks to S3, so only it gets the endpoint and keys.
      # Server-side jobs (GenAI scorers, prompt optimisation, trace rollups) cost 8 more
      # processes (~1 GB) and the platform uses none of them.
      SERVER_ENV=(MLFLOW_S3_ENDPOINT_URL="$S3_ENDPOINT" AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY"
        AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" AWS_DEFAULT_REGION="$S3_REGION"
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true)
      ;;
    prefect)
      SERVER_CMD=(prefect server start --host 127.0.0.1 --port "$PREFECT_PORT")
      # Without a database URL the server keeps SQLite in $PREFECT_HOME.
      SERVER_ENV=(PREFECT_HOME="$STACK_HOME/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true)
      if [[ "$STACK_PROFILE" == production ]]; then
        SERVER_ENV+=(PREFECT_SERVER_DATABASE_CONNECTION_URL="$PREFECT_POSTGRES_URL")
      fi
      ;;
    *) return 1 ;;
  esac
}

# Fills CLIENT_ENV with what a client of the stack needs (NAME=value), given the MLflow, Prefect
# and S3 URLs: stack-up.sh writes it to the env file, and infra/compose.yaml's worker gets it.
client_env() {
  CLIENT_ENV=(MLFLOW_TRACKING_URI="$1" PREFECT_API_URL="$2/api" AWS_ENDPOINT_URL="$3"
    AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" AWS_DEFAULT_REGION="$S3_REGION")
}

# The URL a server was started at (recorded, so status and a second stack-up find it whatever
# the environment says now), or the configured one.
server_url() {
  local recorded="$STACK_HOME/$1.url" port
  case "$1" in
    s3) recorded="$S3_STATE/endpoint" port="$S3_PORT" ;;
    mlflow) port="$MLFLOW_PORT" ;;
    prefect) port="$PREFECT_PORT" ;;
  esac
  if [[ -f "$recorded" ]]; then
    cat "$recorded"
  else
    echo "http://127.0.0.1:$port"
  fi
}

health_url() {
  case "$1" in
    s3) echo "$2/healthz" ;;
    mlflow) echo "$2/health" ;;
    prefect) echo "$2/api/health" ;;
  esac
}

healthy() { curl -fsS -o /dev/null --max-time 2 "$(health_url "$1" "$2")" 2>/dev/null; }

# True while process group $1 has a member that is not a zombie.
group_alive() {
  ps -e -o pgid=,stat= | awk -v group="$1" '$1 == group && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

# Prints the pid of server $1 (mlflow or prefect) if its pidfile names a live process running
# that program; setsid made it the leader of its own process group, so the pid is the group id.
server_pid() {
  local pidfile="$STACK_HOME/$1.pid" pid comm stat
  [[ -f "$pidfile" ]] || return 1
  pid="$(<"$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] && read -r comm stat < <(ps -o comm=,stat= -p "$pid" 2>/dev/null) \
    && [[ "$comm" == "$1" && "$stat" != Z* ]] && echo "$pid"
}

# Stops server $1's whole process group (MLflow's uvicorn workers included): SIGTERM, then
# SIGKILL after $STACK_STOP_TIMEOUT seconds. Members whose leader already died are still ours:
# no new process gets a pid that a live process group still uses as its id. A pid now held by
# some other program is left alone.
stop_server() {
  local name="$1" pidfile="$STACK_HOME/$1.pid" pid comm deadline
  [[ -f "$pidfile" ]] || return 0
  pid="$(<"$pidfile")"
  rm -f "$pidfile"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if read -r comm < <(ps -o comm= -p "$pid" 2>/dev/null) && [[ "$comm" != "$name" ]]; then
    return 0
  fi
  group_alive "$pid" || return 0
  kill -TERM -- "-$pid" 2>/dev/null || true
  deadline=$((SECONDS + STACK_STOP_TIMEOUT))
  while group_alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if group_alive "$pid"; then
    log "$name (process group $pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || true
    while group_alive "$pid"; do
      sleep 0.1
    done
  fi
  log "$name stopped (pid $pid)"
}
