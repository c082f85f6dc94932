"""Options shared by several commands, defined once."""

import click

output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object on stdout, everything else on stderr.",
)

set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a spec value (YAML-typed), e.g. --set training.epochs=2. Repeatable.",
)
