"""Fills `${{ run.args }}`, `${{ env.NAME }}` and `${{ secrets.NAME }}` in a run configuration at submit time.

`$${{` escapes a literal `${{`. Every value that came from a secret, or from the caller's environment through a bare
`env` name, or that an `env` name looking secret holds (configuration.secret_names), is recorded so that plans and
logs can print it as `[secret]` (see `Redactor`).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence

from configuration.errors import ConfigurationError
from configuration.node_groups import check_node_refs
from configuration.secret_names import looks_secret
from configuration.secret_store import read_secrets

_PATTERN = re.compile(r"(\$?)\$\{\{\s*([A-Za-z_]+)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
SECRET_MASK = "[secret]"


class Redactor:
    """Replaces every known secret value inside a text with `[secret]`. Values shorter than four characters (a `1`
    from a bare env name) are not searched for in free text, where they would mask every digit; the fields that hold
    them are masked whole."""

    MIN_LENGTH = 4

    def __init__(self, secrets: Sequence[str] = ()):
        self._secrets = sorted({s for s in secrets if len(s) >= self.MIN_LENGTH}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, SECRET_MASK)
        return text

    def __bool__(self) -> bool:
        return bool(self._secrets)


def load_secrets(environ: Mapping[str, str]) -> Callable[[str], Optional[str]]:
    """Secrets come from the store (`dstack secret set`, configuration.secret_store), then from the environment."""
    stored = read_secrets()
    return lambda name: stored.get(name, environ.get(name))


@dataclass
class Interpolator:
    source: str
    run_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    secret: Callable[[str], Optional[str]] = lambda name: None
    used_secrets: List[str] = field(default_factory=list)

    def __call__(self, text: str, where: str, allow: FrozenSet[str]) -> str:
        def replace(match: re.Match) -> str:
            escaped, namespace, name = match.groups()
            if escaped:
                return match.group(0)[1:]
            if namespace not in allow:
                raise ConfigurationError(
                    f"{self.source}: {where}: ${{{{ {namespace}.{name} }}}} is not available here "
                    f"(allowed: {', '.join(sorted(n + '.*' for n in allow))})"
                )
            return self._value(namespace, name, where)

        return _PATTERN.sub(replace, text)

    def _value(self, namespace: str, name: str, where: str) -> str:
        if namespace == "run":
            if name != "args":
                raise ConfigurationError(f"{self.source}: {where}: unknown variable run.{name} (only run.args exists)")
            return shlex.join(self.run_args)
        if namespace == "env":
            if name not in self.env:
                raise ConfigurationError(f"{self.source}: {where}: env.{name} is not set in the run's env")
            return self.env[name]
        value = self.secret(name)
        if value is None:
            raise ConfigurationError(
                f"{self.source}: {where}: secret {name} is not set "
                f"(`dstack secret set {name}`, or export {name})"
            )
        self.used_secrets.append(value)
        return value


@dataclass
class ResolvedRun:
    """A run configuration with every variable filled in, and what must never be printed."""

    configuration: object
    redact: Redactor
    secret_env: FrozenSet[str]


def resolve_run(configuration, source: str, run_args: Sequence[str], environ: Mapping[str, str],
                missing_env: Optional[Callable[[str], None]] = None) -> ResolvedRun:
    """Bare `env` names take the caller's value (an error if unset); `${{ ... }}` is filled in env, commands and
    registry credentials. With `missing_env` (a dry run: a plan needs no value), an unset name is said to it and
    left empty, shown masked like every value taken from the environment."""
    interpolate = Interpolator(source=source, run_args=run_args, secret=load_secrets(environ))
    env: Dict[str, str] = {}
    secret_env = set()
    for name, value in configuration.env.items():
        if value is None and name not in environ and missing_env is not None:
            missing_env(f"{source}: env: {name} has no value and is not set in your environment: a run would stop "
                        "here")
            env[name] = ""
            secret_env.add(name)
            continue
        if value is None:
            if name not in environ:
                raise ConfigurationError(f"{source}: env: {name} has no value and is not set in your environment")
            env[name] = environ[name]
            secret_env.add(name)
            interpolate.used_secrets.append(environ[name])
            continue
        before = len(interpolate.used_secrets)
        env[name] = interpolate(value, f"env.{name}", frozenset({"secrets"}))
        if looks_secret(name):  # a literal token in the file
            interpolate.used_secrets.append(env[name])
        if len(interpolate.used_secrets) > before:
            secret_env.add(name)
    interpolate.env = env
    update: Dict[str, object] = {"env": env}
    command_vars = frozenset({"run", "env", "secrets"})
    for key in ("commands", "init"):
        if hasattr(configuration, key):
            update[key] = [interpolate(c, f"{key}[{i}]", command_vars) for i, c in enumerate(getattr(configuration, key))]
    if getattr(configuration, "groups", None):
        update["groups"] = [group.model_copy(update={"commands": [
            interpolate(c, f"groups[{g}].commands[{i}]", command_vars) for i, c in enumerate(group.commands)]})
            for g, group in enumerate(configuration.groups)]
    if configuration.registry_auth is not None:
        auth = configuration.registry_auth
        username = interpolate(auth.username, "registry_auth.username", frozenset({"secrets", "env"}))
        password = interpolate(
            auth.password.get_secret_value(), "registry_auth.password", frozenset({"secrets", "env"})
        )
        interpolate.used_secrets.append(password)
        update["registry_auth"] = type(auth)(username=username, password=password)
    resolved = configuration.model_copy(update=update)
    if resolved.type == "task":
        check_node_refs(resolved, source)
    return ResolvedRun(resolved, Redactor(interpolate.used_secrets), frozenset(secret_env))
