"""A command line read as click reads it, for the commands that cli.main answers without typer (`dstack offers`,
`dstack ps`): the common forms only; anything else is left to the typer app, which gives the answer, the help or the
error."""

from __future__ import annotations

from typing import Dict, List, Optional

VALUE, FLAG = True, False


def parse_flags(argv: List[str], flags: Dict[str, tuple]) -> Optional[dict]:
    """The parameters as click gives them (a repeated option: a list), or None for a command line left to typer.
    `flags`: every name an option has -> (its parameter, VALUE or FLAG, whether it repeats). Taken: `--name value`,
    `--name=value`, `-x value`, `-xvalue`; not: `--`, arguments, bundled short flags, a value starting with `-`, a
    single option given twice."""
    values: dict = {}
    args = iter(argv)
    for arg in args:
        name, attached = arg, None
        if arg.startswith("--") and "=" in arg:
            name, attached = arg.split("=", 1)
        elif len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and flags.get(arg[:2], (None, FLAG))[1] is VALUE:
            name, attached = arg[:2], arg[2:]
        spec = flags.get(name)
        if spec is None:
            return None
        parameter, takes_value, repeats = spec
        if takes_value is FLAG:
            if attached is not None:
                return None
            values[parameter] = True
            continue
        value = attached if attached is not None else next(args, None)
        if value is None or value.startswith("-") or (parameter in values and not repeats):
            return None
        if repeats:
            values.setdefault(parameter, []).append(value)
        else:
            values[parameter] = value
    return values
