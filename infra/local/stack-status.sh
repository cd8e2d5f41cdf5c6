#!/usr/bin/env bash
# Report each server of the stack started by stack-up.sh, one line each on stdout:
# name, up or down, URL, and pid while its process lives. Up means the process runs and answers
# its health check. Exit status 0 if all are up, 3 if any is down.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=infra/local/stack-lib.sh
source "$here/stack-lib.sh"

status=0
[[ -f "$STACK_PROFILE_FILE" ]] && printf '%-8s %s\n' profile "$(<"$STACK_PROFILE_FILE")"
for name in s3 mlflow prefect; do
  url="$(server_url "$name")"
  if [[ "$name" == s3 ]]; then
    pid="$(running_pid)" || pid=""
  else
    pid="$(server_pid "$name")" || pid=""
  fi
  if [[ -n "$pid" ]] && healthy "$name" "$url"; then
    state=up
  else
    state=down
    status=3
  fi
  printf '%-8s %-5s %s%s\n' "$name" "$state" "$url" "${pid:+  pid $pid}"
done
exit "$status"
