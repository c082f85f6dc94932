"""The root `orch` group. Each command lives in its own module and is attached here.

A command's module is imported when the command runs (torch, Ray and MLflow take seconds to
import), so `orch submit` can say what it does within a second of being started.
"""

import importlib
import sys

import click

from orchestrator import __version__
from orchestrator.errors import OrchError

# name -> "module:attribute" of each command
COMMANDS = {
    "models": "orchestrator.cli.models:models",
    "data": "orchestrator.cli.data:data",
    "submit": "orchestrator.cli.submit:submit",
    "runs": "orchestrator.cli.runs:runs_command",
    "status": "orchestrator.cli.runs:status",
    "logs": "orchestrator.cli.runs:logs",
    "stop": "orchestrator.cli.runs:stop",
    "checkpoints": "orchestrator.cli.runs:checkpoints",
    "resume": "orchestrator.cli.resume:resume",
    "evaluate": "orchestrator.cli.evaluate:evaluate",
    "ensemble": "orchestrator.cli.ensemble:ensemble",
    "ui": "orchestrator.cli.ui:ui",
    "sweep": "orchestrator.cli.sweep:sweep",
    "report": "orchestrator.cli.report:report",
}


class LazyGroup(click.Group):
    """A group whose commands (COMMANDS) are imported the first time one is asked for."""

    def list_commands(self, ctx):
        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMANDS:
            self.add_command(_load(COMMANDS[name]), name)
        return self.commands.get(name)


def _load(target: str) -> click.Command:
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orch")
def cli():
    """orch: train the ResNet paper's networks with Ray Train DDP, FFCV data and MLflow.

    \b
    Quick start:
      orch data prepare fashion-mnist --out data/fashion-mnist
      orch submit jobs/demo_fashion_mnist.yaml
      orch ui                     # the MLflow dashboard on the runs
    """


def _attach_commands():
    """Import every command now (the group imports each on first use anyway)."""
    for name in COMMANDS:
        cli.get_command(None, name)


def main(argv=None):
    """Entry point: user errors become one line on stderr and exit code 2."""
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
