"""One Pulumi stack per run, through the automation API with inline programs.

State lives in a `file://` backend under `$DSTACK_HOME/pulumi` unless the config names another backend (`s3://`,
`gs://`, Pulumi Cloud). Secrets use the passphrase provider with a passphrase generated once into
`$DSTACK_HOME/pulumi/passphrase` (mode 0600); it is handed to the engine as a file, never on a command line.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from configuration.errors import ConfigurationError
from configuration.home import dstack_home, private_dir, private_file
from stacks.errors import StackFailure, classify
from stacks.spec import PROJECT

INSTALL_HINT = (
    "The Pulumi CLI is not installed; dstack drives cloud resources through it and pip cannot install it.\n"
    "Install it with `dstack setup pulumi` (downloads the version matching the SDK into ~/.pulumi), or\n"
    "`curl -fsSL https://get.pulumi.com | sh`, or `brew install pulumi`, then make sure `pulumi` is on PATH."
)


class PulumiMissing(ConfigurationError):
    pass


def find_pulumi() -> Optional[str]:
    """The `pulumi` binary: on PATH, in one `dstack setup pulumi` put in ~/.pulumi/versions/<version>/bin (the
    newest version), or in ~/.pulumi/bin (the installer's place)."""
    found = shutil.which("pulumi")
    if found:
        return found
    home = Path.home() / ".pulumi"
    installed = sorted(glob.glob(str(home / "versions" / "*" / "bin" / "pulumi")),
                       key=lambda binary: _version_key(Path(binary).parent.parent.name), reverse=True)
    for candidate in [*installed, str(home / "bin" / "pulumi")]:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _version_key(name: str) -> tuple:
    """A version folder's order: 3.272.0 above 3.99.0, a release above its pre-releases, a name that is no version
    below every version."""
    match = re.fullmatch(r"v?(\d+(?:\.\d+)*)(-.+)?", name)
    if match is None:
        return 0, (), 0
    return 1, tuple(int(part) for part in match.group(1).split(".")), 0 if match.group(2) else 1


def require_pulumi():
    """The automation API's command object, or a clear error before anything else happens."""
    path = find_pulumi()
    if path is None:
        raise PulumiMissing(INSTALL_HINT)
    from stacks.engine import engine_command_class

    return engine_command_class()(root=engine_root(path))


def engine_root(binary: str) -> str:
    """The `root` the automation API's PulumiCommand takes: it runs `root/bin/pulumi`. For a binary in a folder named
    `bin` that is the folder above; for one elsewhere (an unpacked tarball, a package manager's folder) a folder
    under $DSTACK_HOME/pulumi/cli, one per binary's folder, whose `bin` links to that folder (so the plugins beside
    the binary are found beside it as well)."""
    folder = os.path.dirname(os.path.abspath(binary))
    if os.path.basename(binary) == "pulumi" and os.path.basename(folder) == "bin":
        return os.path.dirname(folder)
    root = private_dir(dstack_home() / "pulumi" / "cli" / hashlib.sha256(folder.encode()).hexdigest()[:16])
    link = root / "bin"
    if not (link.is_symlink() and os.readlink(link) == folder):
        made = root / f"bin.{os.getpid()}"  # made aside, then renamed over: commands at once never see it half made
        made.unlink(missing_ok=True)
        os.symlink(folder, made)
        os.replace(made, link)
    return str(root)


def install_pulumi() -> str:
    from pulumi.automation import PulumiCommand

    command = PulumiCommand.install()
    return command.command


@dataclass(frozen=True)
class StateSettings:
    backend_url: str
    passphrase_file: Path


def state_settings(backend_url: Optional[str] = None) -> StateSettings:
    home = dstack_home() / "pulumi"
    url = backend_url or f"file://{home / 'state'}"
    if url.startswith("file://"):
        private_dir(Path(url[len("file://"):]))
    passphrase = home / "passphrase"
    if not passphrase.exists() or passphrase.stat().st_size == 0:
        private_file(passphrase).write_text(secrets.token_urlsafe(32))
    return StateSettings(url, passphrase)


def _workspace_options(settings: StateSettings, program: Optional[Callable[[], None]] = None):
    """The workspace's folder is $DSTACK_HOME/pulumi/work (the project file and each stack's settings): left to
    itself, the automation API makes a new temporary folder per workspace and never removes it."""
    from pulumi import automation as auto

    return auto.LocalWorkspaceOptions(
        work_dir=str(private_dir(dstack_home() / "pulumi" / "work")),
        pulumi_command=require_pulumi(),
        project_settings=auto.ProjectSettings(name=PROJECT, runtime="python",
                                              backend=auto.ProjectBackend(url=settings.backend_url)),
        secrets_provider="passphrase",
        env_vars={"PULUMI_CONFIG_PASSPHRASE_FILE": str(settings.passphrase_file),
                  "PULUMI_BACKEND_URL": settings.backend_url, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        program=program,
    )


def open_stack(name: str, program: Callable[[], None], settings: StateSettings):
    from pulumi import automation as auto

    return auto.create_or_select_stack(stack_name=name, project_name=PROJECT, program=program,
                                       opts=_workspace_options(settings, program))


def stack_up(stack, on_event: Optional[Callable] = None, update: bool = False) -> Dict[str, object]:
    """Creates the run's resources. On failure everything created is destroyed and a classified StackFailure says
    whether the next offer is worth trying. `update`: a cloud fleet's stack gaining or losing instances, refreshed
    first (an instance that ended itself is gone from its state), and never destroyed on failure: its other
    instances stay, and the caller brings it back to the list it had."""
    from pulumi import automation as auto

    try:
        if update:
            stack.refresh(clear_pending_creates=True, color="never", show_secrets=False)
        result = stack.up(on_event=on_event, color="never", show_secrets=False)
    except (auto.errors.CommandError, auto.errors.InlineSourceRuntimeError) as e:
        failure = classify(str(e))
        if update:
            raise failure from None
        try:
            stack_destroy(stack, on_event=on_event)
        except StackFailure as cleanup:
            failure.message += f" (and the cleanup failed: {cleanup.message}; run `dstack stop` again)"
        raise failure from None
    return {name: output.value for name, output in result.outputs.items()}


def stack_destroy(stack, on_event: Optional[Callable] = None, remove: bool = True) -> None:
    """Refresh first, dropping 'pending create' operations an interrupted `up` left with no cloud id, then destroy
    and forget the stack. Resources of such operations are found by their run tag (`stacks.leftovers`). A failure
    is a classified StackFailure: one line for the user, not the engine's output."""
    from pulumi import automation as auto

    try:
        stack.refresh(clear_pending_creates=True, color="never", show_secrets=False)
        stack.destroy(on_event=on_event, color="never", show_secrets=False)
        if remove:
            stack.workspace.remove_stack(stack.name)
    except auto.errors.CommandError as e:
        raise classify(str(e)) from None


def list_stacks(settings: StateSettings) -> List[dict]:
    from pulumi import automation as auto

    workspace = auto.LocalWorkspace(**vars(_workspace_options(settings)))  # the options' fields are its keywords
    stacks = []
    try:
        for summary in workspace.list_stacks():
            outputs = workspace.stack_outputs(summary.name)
            stacks.append({"name": summary.name, "resources": summary.resource_count,
                           "outputs": {k: ("[secret]" if v.secret else v.value) for k, v in outputs.items()}})
    except auto.errors.CommandError as e:
        raise ConfigurationError(f"listing the stacks in {settings.backend_url} failed: "
                                 f"{classify(str(e)).message}") from None
    return stacks
