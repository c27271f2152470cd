"""The Pulumi program of a GCP network volume: one balanced persistent disk in the volume's zone, labelled like a
run's resources (with `dstack-volume` instead of `dstack-run`)."""

from __future__ import annotations

from stacks.volume_spec import VolumeSpec


def gcp_volume_program(spec: VolumeSpec) -> None:
    import pulumi
    import pulumi_gcp as gcp

    labels = spec.labels()
    provider = gcp.Provider("gcp", project=spec.gcp_project_id, region=spec.region, zone=spec.zone,
                            default_labels=labels)
    disk = gcp.compute.Disk(spec.resource_name, name=spec.resource_name, zone=spec.zone, size=spec.size_gb,
                            type="pd-balanced", labels=labels, opts=pulumi.ResourceOptions(provider=provider))
    pulumi.export("volume_id", disk.name)
    pulumi.export("zone", disk.zone)
