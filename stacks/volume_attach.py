"""A run's network volumes attached to its instance, in the run's own stack: destroying the run's stack detaches them
while each volume's own stack keeps its disk and data.

An EBS attachment is left to the instance's termination to undo (`skip_destroy`): detaching first would have to stop
the instance, which a spot instance cannot be. A GCP attached disk is detached from the running VM, then the VM is
deleted."""

from __future__ import annotations

from stacks.spec import StackSpec


def attach_aws_volumes(spec: StackSpec, instance, opts) -> None:
    import pulumi_aws as aws

    for volume in spec.volumes:
        aws.ec2.VolumeAttachment(f"{spec.resource_name}-{volume.name}", device_name=volume.device_name,
                                 volume_id=volume.volume_id, instance_id=instance.id, skip_destroy=True,
                                 opts=opts)


def attach_gcp_volumes(spec: StackSpec, instance, opts) -> None:
    import pulumi_gcp as gcp

    for volume in spec.volumes:
        gcp.compute.AttachedDisk(f"{spec.resource_name}-{volume.name}", disk=volume.volume_id,
                                 instance=instance.self_link, zone=spec.zone, device_name=volume.device_name,
                                 opts=opts)
