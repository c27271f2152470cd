"""The configuration files the cloudsim scenarios apply: a one-command task and a one-node fleet per cloud."""

from tests.helpers import write

HELLO = "echo hello from $DSTACK_RUN_NAME"

AWS_TASK = """type: task
name: {name}
commands:
  - {command}
regions: [{regions}]
instance_types: [{types}]
"""

GCP_TASK = """type: task
name: {name}
commands:
  - {command}
regions: [us-central1]
instance_types: [{types}]
"""

AWS_FLEET = """type: fleet
name: pool
nodes: 1
backends: [aws]
regions: [us-east-1]
instance_types: [t3a.large]
"""


def aws_task(tmp_path, name, command=HELLO, regions="us-east-1", types="t3a.large", extra="") -> str:
    return write(tmp_path, f"{name}.dstack.yml",
                 AWS_TASK.format(name=name, command=command, regions=regions, types=types) + extra)


def gcp_task(tmp_path, name, command=HELLO, types="e2-standard-2", extra="") -> str:
    return write(tmp_path, f"{name}.dstack.yml", GCP_TASK.format(name=name, command=command, types=types) + extra)
