"""The one way a cloud VM ends itself: `/usr/local/sbin/dstack-power-off`, written by cloud-init and called by the
VM's deadlines (the start watchdog, max_duration) and by the job wrapper after the job ends.

`dstack-power-off` ends the VM now; `dstack-power-off MINUTES` schedules that (a transient systemd timer, which
unlike `shutdown +N` does not block logins meanwhile, so `dstack logs` can still fetch the log's end).
`dstack-power-off --idle MINUTES` is the idle watchdog the job wrapper sets when a job ends (the instance's
idle_duration, provisioner.planning.reuse): one timer of a fixed name, replaced by the next one, which
`dstack-power-off --cancel-idle` stops when the next job starts on a reused instance. The other timers (max_duration's
deadline) are never cancelled.

On AWS powering off is enough: instances terminate on shutdown. A GCP VM that powers off is only stopped and its
disk stays billed, so there the script DELETEs its own instance through the Compute API with the token of the VM's
service account, which may delete this one instance and nothing else (stacks/gcp.py), and powers off if that fails.
The addresses are variables with the real ones as defaults, so a test can point the script at local servers;
it runs as root from systemd or sudo, which do not pass a caller's environment on.
"""

from __future__ import annotations

POWER_OFF_PATH = "/usr/local/sbin/dstack-power-off"
METADATA_URL = "http://metadata.google.internal/computeMetadata/v1"
COMPUTE_URL = "https://compute.googleapis.com/compute/v1"

_SCHEDULE = """#!/bin/sh
# Written by dstack's cloud-init: end this VM for good. With MINUTES: in that many minutes.
set -u
IDLE=dstack-idle-power-off
case "${1:-}" in
  --cancel-idle) systemctl stop "$IDLE.timer" 2>/dev/null; exit 0 ;;
  --idle) systemctl stop "$IDLE.timer" 2>/dev/null
          exec systemd-run --quiet --collect --on-active="${2}min" --unit="$IDLE" "$0" ;;
esac
if [ $# -gt 0 ]; then
  exec systemd-run --quiet --collect --on-active="${1}min" --unit="dstack-power-off-$$" "$0"
fi
SHUTDOWN=${DSTACK_SHUTDOWN:-shutdown -P now}
"""

_AWS = """exec $SHUTDOWN
"""

# The token goes to curl on stdin (-K -), never on a command line where `ps` would show it.
_GCP = f"""MD=${{DSTACK_METADATA_URL:-{METADATA_URL}}}
API=${{DSTACK_COMPUTE_URL:-{COMPUTE_URL}}}
md() {{ curl -fsS --max-time 10 -H 'Metadata-Flavor: Google' "$MD/$1"; }}
delete_self() {{
  token=$(md instance/service-accounts/default/token | sed -n 's/.*"access_token" *: *"\\([^"]*\\)".*/\\1/p')
  project=$(md project/project-id) && zone=$(md instance/zone) && name=$(md instance/name) && [ -n "$token" ] ||
    return 1
  printf 'header = "Authorization: Bearer %s"\\n' "$token" |
    curl -fsS --max-time 30 -X DELETE -K - "$API/projects/$project/zones/${{zone##*/}}/instances/$name" >/dev/null
}}
tries=${{DSTACK_DELETE_TRIES:-3}}
while [ "$tries" -gt 0 ]; do
  if delete_self; then
    logger -t dstack "deleting this instance" 2>/dev/null || true
    sleep "${{DSTACK_DELETE_GRACE_S:-300}}"  # the Compute API shuts the VM down; power off if it has not by now
    break
  fi
  tries=$((tries - 1))
  [ "$tries" -gt 0 ] && sleep "${{DSTACK_RETRY_S:-20}}"  # a new instance's IAM binding takes a while to apply
done
exec $SHUTDOWN
"""


def power_off_script(delete_self: bool) -> str:
    """`delete_self`: a GCP VM with its own service account (the gcp backend's `self_delete`); else power off."""
    return _SCHEDULE + (_GCP if delete_self else _AWS)
