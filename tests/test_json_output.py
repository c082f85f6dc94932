"""--output json: stdout holds the command's one JSON object, whatever else prints to stdout on
the way (Ray's log monitor printing a raylet warning from a thread, a library's print, a C
extension writing to descriptor 1, a child process that inherits it, an atexit handler)."""

import json
import subprocess
import sys
import textwrap

import click
from click.testing import CliRunner

from orchestrator.cli.options import emit_json, output_option

NOISY_COMMAND = textwrap.dedent(
    """
    import atexit, os, subprocess, sys, threading
    import click
    from orchestrator.cli.options import emit_json, output_option

    @click.command()
    @output_option
    def noisy(output):
        print("(raylet) WARNING: 8 PYTHON worker processes have been started")  # Ray's log monitor does this
        os.write(1, b"written to descriptor 1\\n")
        subprocess.run(["echo", "a child process"], check=True)
        threading.Thread(target=print, args=("(a Ray thread, later)",)).start()
        atexit.register(print, "(at exit)")
        if output == "json":
            emit_json({"status": "FINISHED"})
        else:
            click.echo("FINISHED")

    noisy()
    """
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NOISY_COMMAND, *args], capture_output=True, text=True, timeout=60, check=True
    )


def test_json_stdout_is_one_object_whatever_prints_beside_it():
    proc = _run("--output", "json")
    assert json.loads(proc.stdout) == {"status": "FINISHED"}  # one object, nothing before or after it
    for noise in ("(raylet) WARNING", "descriptor 1", "a child process", "(a Ray thread, later)", "(at exit)"):
        assert noise in proc.stderr


def test_text_output_keeps_stdout():
    proc = _run()
    assert "(raylet) WARNING" in proc.stdout and proc.stdout.rstrip().endswith("(at exit)")
    assert "FINISHED" in proc.stdout


def test_a_captured_stdout_is_given_back_after_each_command():
    """In one process (the tests' CliRunner), each command's object is on its own stdout and
    sys.stdout is the runner's again afterwards."""

    @click.command()
    @output_option
    def command(output):
        print("noise")
        emit_json({"n": 1})

    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(command, ["--output", "json"])
        assert result.exit_code == 0 and json.loads(result.stdout) == {"n": 1}
        assert "noise" in result.stderr
    assert runner.invoke(command, []).stdout.startswith("noise")
