"""The Pulumi program of an AWS network volume: one gp3 EBS volume in the volume's zone, tagged like a run's
resources (with `dstack:volume` instead of `dstack:run`)."""

from __future__ import annotations

from stacks.volume_spec import VolumeSpec


def aws_volume_program(spec: VolumeSpec) -> None:
    import pulumi
    import pulumi_aws as aws

    tags = spec.tags()
    provider = aws.Provider("aws", region=spec.region, default_tags={"tags": tags})
    volume = aws.ebs.Volume(spec.resource_name, availability_zone=spec.zone, size=spec.size_gb, type="gp3",
                            encrypted=True, tags=tags, opts=pulumi.ResourceOptions(provider=provider))
    pulumi.export("volume_id", volume.id)
    pulumi.export("zone", volume.availability_zone)
