#!/usr/bin/env bash
# Stop the stack started by stack-up.sh: the Prefect and MLflow servers with their process
# groups (SIGTERM, then SIGKILL after DGR2_STACK_STOP_TIMEOUT seconds, default 15), then S3
# (s3-down.sh, DGR2_S3_STOP_TIMEOUT). Removes the env file first, so no client picks up a stack
# that is going away. Safe to run when nothing is running.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=infra/local/stack-lib.sh
source "$here/stack-lib.sh"

rm -f "$STACK_ENV_FILE"
for name in prefect mlflow; do
  stop_server "$name"
  rm -f "$STACK_HOME/$name.url"
done
DGR2_HOME="$STACK_HOME" "$here/s3-down.sh"
rm -f "$STACK_PROFILE_FILE"
