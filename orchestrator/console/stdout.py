"""Where --output json's one object goes: from the moment the option is read, whatever anything
prints to stdout (Ray's log monitor and warnings, a library's print, a child process that inherits
the descriptor, an atexit handler) goes to stderr, and the command's one JSON object goes to the
real stdout through emit_json."""

import io
import json
import os
import sys

import click

_json_stream = None  # where emit_json writes while --output json holds stdout for it


def json_mode(ctx: click.Context, _param, value: str) -> str:
    """--output json: from here on, whatever anything prints to stdout (Ray's log monitor and
    warnings, a library's print, a child process that inherits the descriptor) goes to stderr;
    the command's one JSON object goes to the real stdout through emit_json."""
    if value == "json" and _json_stream is None:
        _hold_stdout(ctx)
    return value


def _hold_stdout(ctx: click.Context) -> None:
    global _json_stream
    saved = sys.stdout
    saved.flush()
    try:
        real_fd = saved.fileno() == 1
    except (AttributeError, ValueError, io.UnsupportedOperation):
        real_fd = False  # a test's captured stdout: Python's stream only
    if real_fd:
        # A copy of the descriptor for the object; descriptor 1 itself now leads to stderr, for
        # the rest of this process (Ray's threads and atexit handlers print after the command).
        _json_stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
    else:
        _json_stream = saved
        ctx.call_on_close(_release)
    sys.stdout = sys.stderr


def _release() -> None:
    """Give a captured stdout back (tests that invoke several commands in one process)."""
    global _json_stream
    sys.stdout, _json_stream = _json_stream, None


def emit_json(obj, **dumps) -> None:
    """The command's one JSON object, on stdout (the real one under --output json)."""
    text = json.dumps(obj, **dumps)
    if _json_stream is None:
        click.echo(text)
        return
    _json_stream.write(text + "\n")
    _json_stream.flush()
