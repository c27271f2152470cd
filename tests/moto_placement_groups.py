"""moto (5.2) has no EC2 placement groups. This adds CreatePlacementGroup, DescribePlacementGroups (with tag
filters) and DeletePlacementGroup to moto's EC2 responses, so the leftover sweep (stacks/aws_leftovers.py) runs
against the same moto server as the rest of `dstack gc`. Groups are kept per region, as EC2 keeps them."""

from __future__ import annotations

_GROUPS: dict = {}  # (region, name) -> the group as DescribePlacementGroups answers it


def install() -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.responses import EC2Response

    if hasattr(EC2Response, "describe_placement_groups"):
        return

    def create_placement_group(self) -> ActionResult:
        name = self._get_param("GroupName")
        tags = self._parse_tag_specification("placement-group").get("placement-group", {})
        group = {"GroupName": name, "Strategy": self._get_param("Strategy"), "State": "available",
                 "GroupId": f"pg-{len(_GROUPS):017x}", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        _GROUPS[(self.region, name)] = group
        return ActionResult({"PlacementGroup": group})

    def describe_placement_groups(self) -> ActionResult:
        filters = self._filters_from_querystring()

        def matches(group: dict) -> bool:
            tags = {t["Key"]: t["Value"] for t in group["Tags"]}
            for name, values in filters.items():
                if not name.startswith("tag:"):
                    raise NotImplementedError(f"placement group filter {name}")
                if tags.get(name[len("tag:"):]) not in values:
                    return False
            return True

        groups = [g for (region, _), g in _GROUPS.items() if region == self.region and matches(g)]
        return ActionResult({"PlacementGroups": groups})

    def delete_placement_group(self) -> ActionResult:
        _GROUPS.pop((self.region, self._get_param("GroupName")))
        return ActionResult({})

    EC2Response.create_placement_group = create_placement_group
    EC2Response.describe_placement_groups = describe_placement_groups
    EC2Response.delete_placement_group = delete_placement_group
