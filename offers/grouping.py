"""`dstack offers --group-by gpu[,backend,region,count]`: one row per GPU model (and the other keys), with the
count range, price range, price per GPU range (dstack's `$/GPU`), spot kinds and backends it spans."""

from __future__ import annotations

from typing import Dict, List, Sequence

from offers.offer import Offer

GROUP_KEYS = ("gpu", "backend", "region", "count")


def parse_group_by(text: str) -> List[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in GROUP_KEYS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)} (allowed: {', '.join(GROUP_KEYS)})")
    if "gpu" not in keys:
        raise ValueError("--group-by must include gpu (e.g. gpu, or gpu,backend)")
    return keys


def group_offers(offers: Sequence[Offer], keys: Sequence[str]) -> List[dict]:
    groups: Dict[tuple, dict] = {}
    for offer in offers:
        t = offer.instance
        values = {
            "gpu": t.gpu_name or None,
            "backend": offer.backend,
            "region": offer.region,
            "count": t.gpu_count,
        }
        key = tuple(values[k] for k in keys)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {k: values[k] for k in keys}
            group.update(memory_gb=t.gpu_memory_gib or None, count_range=[t.gpu_count, t.gpu_count],
                         price=[offer.price, offer.price], per_gpu=[], spot=set(), backends=set(), offers=0)
        group["count_range"] = [min(group["count_range"][0], t.gpu_count), max(group["count_range"][1], t.gpu_count)]
        group["price"] = [min(group["price"][0], offer.price), max(group["price"][1], offer.price)]
        if t.gpu_count:
            group["per_gpu"].append(offer.price / t.gpu_count)
        group["spot"].add("spot" if offer.spot else "on-demand")
        group["backends"].add(offer.backend)
        group["offers"] += 1
    rows = []
    for group in groups.values():
        count_range = group.pop("count_range")
        price = group.pop("price")
        group["count"] = {"min": count_range[0], "max": count_range[1]}
        group["price"] = {"min": round(price[0], 6), "max": round(price[1], 6)}
        per_gpu = group.pop("per_gpu")
        group["price_per_gpu"] = ({"min": round(min(per_gpu), 6), "max": round(max(per_gpu), 6)} if per_gpu
                                  else None)
        group["spot"] = sorted(group["spot"])
        group["backends"] = sorted(group["backends"])
        rows.append(group)
    rows.sort(key=lambda g: (g["price"]["min"], str(g.get("gpu")), g.get("backend", ""), g.get("region", "")))
    return rows
