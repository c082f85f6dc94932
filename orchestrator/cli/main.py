"""The root `orch` group. Each command lives in its own module and is attached here."""

import sys

import click

from orchestrator import __version__
from orchestrator.errors import OrchError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orch")
def cli():
    """orch: train the ResNet paper's networks with Ray Train DDP, FFCV data and MLflow.

    \b
    Quick start:
      orch data prepare fashion-mnist --out data/fashion-mnist
      orch submit jobs/demo_fashion_mnist.yaml
    """


def _attach_commands():
    from orchestrator.cli import data, ensemble, evaluate, models, resume, runs, submit

    commands = (
        models.models,
        data.data,
        submit.submit,
        *runs.COMMANDS,
        resume.resume,
        evaluate.evaluate,
        ensemble.ensemble,
    )
    for command in commands:
        cli.add_command(command)


def main(argv=None):
    """Entry point: user errors become one line on stderr and exit code 2."""
    _attach_commands()
    try:
        cli.main(args=argv, prog_name="orch", standalone_mode=False)
    except OrchError as exc:
        click.echo(f"orch: {exc.label}: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("orch: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
