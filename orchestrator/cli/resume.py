"""`orch resume RUN`: continue a finished, failed or killed run from its latest good checkpoint."""

import json

import click

from orchestrator.cli.options import output_option, set_option
from orchestrator.cli.runs import uri_option


@click.command()
@click.argument("run")
@set_option
@uri_option
@output_option
def resume(run, overrides, uri, output):
    """Continue RUN (an MLflow run id or unique name) in the same run, e.g. for one more epoch:

    \b
      orch resume RUN --set training.epochs=5
    """
    from orchestrator.progress import format_summary
    from orchestrator.resume import resume_run

    outcome = resume_run(run, overrides, uri=uri, progress_to_stderr=output == "json")
    click.echo(json.dumps(outcome.as_json()) if output == "json" else format_summary(outcome))
