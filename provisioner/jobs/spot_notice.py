"""A spot VM's interruption notice, read on the host while the job runs: `notice.sh` (started by the job's wrapper
beside the job, provisioner.jobs.launch) watches the cloud's instance metadata, and when the notice comes writes
one line to the job's log and the same text to NOTICE_FILE in the job folder, which the client reads with the log
(provisioner.jobs.control.read_log) or on `dstack ps` (read_notice): the run is interrupted from that record,
before the cloud takes the VM back.

- AWS (EC2 user guide, "Spot Instance interruption notices"): `spot/instance-action` in the instance metadata, with
  an IMDSv2 session token (PUT /latest/api/token); 404 until EC2 sends the notice (two minutes ahead), then JSON
  with `action` and `time`. Read every AWS_INTERVAL_S, as AWS recommends.
- GCP (Compute Engine, "Detect if a VM was preempted"): the metadata key `instance/preempted`, FALSE until the
  preemption starts (about 30 s before the VM stops), asked with `wait_for_change`: one request held open by the
  metadata server until the value changes, no polling.

Only a cloud spot VM's job has it (JobSpec.spot_notice names the cloud); curl does the requests (on every cloud
image); without it the watcher ends at once and the run is told of an interruption by the cloud's API alone.
"""

from __future__ import annotations

from typing import Optional

from provisioner.host.transport import Transport
from provisioner.jobs.layout import job_folder

NOTICE_FILE = "spot_notice"
NOTICE_SCRIPT_NAME = "notice.sh"
AWS_INTERVAL_S = 5  # between reads of EC2's notice (AWS recommends every 5 s)
GCP_WAIT_S = 60  # how long one `wait_for_change` request is held open by the metadata server
RETRY_S = 5  # after a metadata server that did not answer

# `notice.sh CLOUD PGID`: until the job's process group is gone, or the wrapper's SIGTERM (which ends the request
# in flight too). A curl or sleep runs in the background and is waited on, so the SIGTERM is acted on at once.
NOTICE_SCRIPT = r"""#!/bin/sh
cd "$(dirname "$0")"
cloud=$1 pg=$2 w=
trap 'kill $w 2>/dev/null; exit 0' TERM
command -v curl >/dev/null 2>&1 || exit 0
bg() { "$@" & w=$!; wait $w; }
notice() {
  line="spot interruption notice from $1"
  [ -z "$(tail -c 1 output.log 2>/dev/null)" ] || echo >> output.log
  echo "dstack: $line" >> output.log
  echo "$line" > NOTICE.tmp && mv NOTICE.tmp NOTICE
  exit 0
}
if [ "$cloud" = aws ]; then
  imds=http://169.254.169.254/latest token=
  while kill -0 "$pg" 2>/dev/null; do
    [ -n "$token" ] || { bg curl -s -f -m 2 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 21600" \
      -o .imds.token "$imds/api/token" && token=$(cat .imds.token); }
    if [ -n "$token" ]; then
      bg curl -s -m 2 -o .imds.body -w '%{http_code}' -H "X-aws-ec2-metadata-token: $token" \
        "$imds/meta-data/spot/instance-action" > .imds.code
      case $(cat .imds.code) in
        200) action=$(sed -n 's/.*"action" *: *"\([^"]*\)".*/\1/p' .imds.body)
             at=$(sed -n 's/.*"time" *: *"\([^"]*\)".*/\1/p' .imds.body)
             notice "AWS: ${action:-terminate} at ${at:-unknown time}" ;;
        401) token= ;;
      esac
    fi
    bg sleep AWS_INTERVAL_S
  done
elif [ "$cloud" = gcp ]; then
  url=http://metadata.google.internal/computeMetadata/v1/instance/preempted etag=
  while kill -0 "$pg" 2>/dev/null; do
    wait_args=${etag:+"?wait_for_change=true&timeout_sec=GCP_WAIT_S&last_etag=$etag"}
    if bg curl -s -m $((GCP_WAIT_S + 10)) -D .metadata.head -o .metadata.body -H "Metadata-Flavor: Google" \
        "$url$wait_args" && head -n 1 .metadata.head | grep -q ' 200'; then
      [ "$(cat .metadata.body)" != TRUE ] || notice "GCP: preempted at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
      etag=$(sed -n 's/^[Ee][Tt][Aa][Gg]: *\([^[:space:]]*\).*/\1/p' .metadata.head)
      [ -n "$etag" ] || bg sleep AWS_INTERVAL_S
    else
      bg sleep RETRY_S
    fi
  done
fi
""".replace("NOTICE", NOTICE_FILE).replace("AWS_INTERVAL_S", str(AWS_INTERVAL_S)) \
    .replace("GCP_WAIT_S", str(GCP_WAIT_S)).replace("RETRY_S", str(RETRY_S))


def watch_start(cloud: Optional[str]) -> str:
    """The wrapper's start of the watcher (after the job's start: $J is its process group), or nothing."""
    if cloud is None:
        return ""
    return f"./{NOTICE_SCRIPT_NAME} {cloud} $J & N=$!; "


def watch_stop(cloud: Optional[str]) -> str:
    """The wrapper's end of the watcher, once the job has ended."""
    return "kill $N 2>/dev/null; " if cloud is not None else ""


def notice_read() -> str:
    """Shell text that prints `notice TEXT` on stderr where the job's host has had the notice (in the job folder);
    the shell reads its one line itself (every read of the log asks for it, until the VM is taken back)."""
    return f"if [ -f {NOTICE_FILE} ]; then n=; read -r n < {NOTICE_FILE}; printf '\\nnotice %s\\n' \"$n\" >&2; fi; "


def parse_notice(stderr_text: str) -> Optional[str]:
    """The notice's text from what notice_read printed among other lines, or None."""
    for line in stderr_text.splitlines():
        if line.startswith("notice "):
            return line[len("notice "):].strip() or None
    return None


def read_notice(transport: Transport, run_name: str) -> Optional[str]:
    """The notice the job's host recorded, or None (no notice, or no job folder)."""
    result = transport.run(f"cd {job_folder(run_name)} 2>/dev/null || exit 0; {notice_read()}true", timeout=30)
    return parse_notice(result.stderr.decode(errors="replace"))
