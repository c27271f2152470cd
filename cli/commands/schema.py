"""`dstack schema`: the JSON Schema of `*.dstack.yml` files, or the Markdown reference generated from the models."""

from __future__ import annotations

import typer
from typing_extensions import Annotated

from cli.output import print_json


def schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the reference page instead of JSON Schema")] = False,
) -> None:
    """Print the JSON Schema of configuration files (for editors), or the reference page."""
    from configuration.reference import json_schema, markdown_reference

    if markdown:
        print(markdown_reference(), end="")
    else:
        print_json(json_schema())
