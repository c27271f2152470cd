"""Runs a stack program under Pulumi's mock runtime, with no engine, no CLI and no cloud call, and returns the
resources it declares with their inputs: the `resources` of `dstack apply --dry-run --json`.

Lookups (the AMI, the VPC, the boot image) cannot be answered offline; the mock answers them with a placeholder that
says what will be looked up at apply time. So are the outputs the cloud computes that a program hands on to another
resource (COMPUTED_OUTPUTS: a placement policy's self link, a service account's email, an instance's primary network
interface, which an Elastic IP names).
"""

from __future__ import annotations

from typing import Callable, List, Tuple

from configuration.interpolation import SECRET_MASK

COMPUTED_OUTPUTS = ("selfLink", "email", "member", "primaryNetworkInterfaceId")


def _mask_secrets(value):
    """Inputs reach the mocks in wire form, where a secret is {sig: secret-sig, value: ...}."""
    from pulumi.runtime import rpc

    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return SECRET_MASK
        return {k: _mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_secrets(v) for v in value]
    return value


def render_program(program: Callable[[], None], stack_name: str, secrets: Tuple[str, ...] = ()) -> List[dict]:
    import pulumi

    resources: List[dict] = []

    class RecordingMocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            if not args.typ.startswith("pulumi:providers:"):
                resources.append({"type": args.typ, "name": args.name, "inputs": _mask_secrets(args.inputs)})
            computed = {key: f"(known at apply: {args.name}'s {key})" for key in COMPUTED_OUTPUTS}
            return [f"{args.name}-id", {**computed, **dict(args.inputs)}]

        def call(self, args: pulumi.runtime.MockCallArgs):
            placeholder = f"(looked up at apply: {args.token})"
            return {"id": placeholder, "selfLink": placeholder, "imageId": placeholder, "ids": [placeholder]}

    pulumi.runtime.set_mocks(RecordingMocks(), project="dstack", stack=stack_name, preview=False)
    try:
        pulumi.runtime.test(program)()
    finally:
        pulumi.runtime.settings.SETTINGS.monitor = None
    resources.sort(key=lambda r: (r["type"], r["name"]))  # registration order varies between runs
    return [_tidy(_redact(r, secrets)) for r in resources]


def _tidy(value):
    """Sorted keys and whole numbers as integers (the wire format turns 22 into 22.0), for a stable, readable plan."""
    if isinstance(value, dict):
        return {k: _tidy(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _redact(value, secrets: Tuple[str, ...]):
    """Belt and braces: a secret that reached an input in plain text (it should not) is masked too."""
    if isinstance(value, str):
        return SECRET_MASK if any(s and s in value for s in secrets) else value
    if isinstance(value, dict):
        return {k: _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    return value
