# Shared by s3-up.sh and s3-down.sh (sourced, not run): where the local S3 server keeps its
# state, and how to tell whether the process named in its pidfile is still ours.

S3_STATE="${DGR2_HOME:-.dgr2}/s3"
S3_PIDFILE="$S3_STATE/weed.pid"
S3_LOG="$S3_STATE/weed.log"
# The ports in use, one a line, so s3-down can remove the unix sockets weed leaves behind.
S3_PORTSFILE="$S3_STATE/ports"

log() { echo "$(basename "$0"): $*" >&2; }

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
