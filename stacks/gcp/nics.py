"""The GPU network interfaces of GCP's A3 and A4 machines, which a stack here does not attach: each VM gets one NIC
(stacks.gcp.program), while these machine types carry further NICs for GPU-to-GPU traffic, each on a VPC network of
its own (Compute Engine documentation, "Networking and GPU machines"). The plan of a cluster on one says what that
costs."""

from __future__ import annotations

from typing import Optional

# machine type -> (its GPU NICs, their bandwidth in Gbps, the machine's total bandwidth in Gbps)
GPU_NICS = {
    "a4-highgpu-8g": ("8 RDMA NICs (ConnectX-7, GPUDirect RDMA)", 3200, 3600),
    "a3-ultragpu-8g": ("8 RDMA NICs (ConnectX-7, GPUDirect RDMA)", 3200, 3600),
    "a3-ultragpu-8g-nolssd": ("8 RDMA NICs (ConnectX-7, GPUDirect RDMA)", 3200, 3600),
    "a3-megagpu-8g": ("8 GPUDirect-TCPXO NICs", 1600, 1800),
    "a3-highgpu-8g": ("4 GPUDirect-TCPX NICs", 800, 1000),
}


def gpu_nic_note(machine_type: str) -> Optional[str]:
    """What the plan says of a cluster of `machine_type` whose GPU NICs are left out; None for other types."""
    if machine_type not in GPU_NICS:
        return None
    nics, gpu_gbps, total_gbps = GPU_NICS[machine_type]
    return (f"{machine_type}: each node gets its first NIC only; its {nics} are not attached, so {gpu_gbps:,} of its "
            f"{total_gbps:,} Gbps of network bandwidth are lost to the nodes' GPU-to-GPU traffic (attaching them "
            "needs a VPC network per NIC, which the stack does not make)")
