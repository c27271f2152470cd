"""GPU models as users write them: canonical names, marketed memory and compute capability.

Clouds report GPU memory as the driver sees it (AWS: A10G and L4 as 22,888 MiB = 22.35 GiB), but users ask for
`gpu: 24GB..`. `normalize_memory` snaps a reported size up to the model's marketed size when it is within 12 % below
it, so the catalogue holds 24 for an A10G. The table is documented in docs/offers.md.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

# name: (vendor, marketed memory sizes in GB, compute capability or None)
GPU_MODELS: Dict[str, Tuple[str, Tuple[float, ...], Optional[Tuple[int, int]]]] = {
    "K80": ("nvidia", (12,), (3, 7)),
    "M60": ("nvidia", (8,), (5, 2)),
    "P4": ("nvidia", (8,), (6, 1)),
    "P100": ("nvidia", (16,), (6, 0)),
    "V100": ("nvidia", (16, 32), (7, 0)),
    "T4": ("nvidia", (16,), (7, 5)),
    "T4g": ("nvidia", (16,), (7, 5)),
    "A10": ("nvidia", (24,), (8, 6)),
    "A10G": ("nvidia", (24,), (8, 6)),
    "A100": ("nvidia", (40, 80), (8, 0)),
    "L4": ("nvidia", (24,), (8, 9)),
    "L40": ("nvidia", (48,), (8, 9)),
    "L40S": ("nvidia", (48,), (8, 9)),
    "H100": ("nvidia", (80,), (9, 0)),
    "H200": ("nvidia", (141,), (9, 0)),
    "B200": ("nvidia", (180,), (10, 0)),
    "B300": ("nvidia", (288,), (10, 3)),
    "RTX PRO Server 6000": ("nvidia", (96,), (12, 0)),
    "Radeon Pro V520": ("amd", (8,), None),
    "Gaudi HL-205": ("intel", (32,), None),
    "Inferentia": ("aws", (8,), None),
    "Inferentia2": ("aws", (32,), None),
    "Trainium": ("aws", (32,), None),
    "Trainium2": ("aws", (96,), None),
    "Qualcomm AI100": ("qualcomm", (16,), None),
}

# Vendors a `gpu:` spec can name; accelerators of other vendors (AWS Inferentia/Trainium, Qualcomm) are offered
# only when the spec names them.
SPEC_VENDORS = frozenset({"nvidia", "amd", "google", "intel"})


def normalize_memory(name: str, reported_gb: float) -> float:
    model = GPU_MODELS.get(name)
    if model is None:
        return reported_gb
    for size in model[1]:
        if size * 0.88 <= reported_gb <= size:
            return float(size)
    return reported_gb


# Accelerators that no image we boot has drivers for (AWS g4ad AMD Radeon, dl1 Intel Gaudi, dl2q Qualcomm AI100):
# a run on them would start with an unusable device, so they are not offers at all (docs/offers.md).
NO_IMAGE_VENDORS = ("amd", "intel", "qualcomm")


def compute_capability(name: str) -> Optional[Tuple[int, int]]:
    model = GPU_MODELS.get(name)
    return model[2] if model else None
