"""Run lifecycle commands: `orch runs`, `orch status`, `orch logs`, `orch stop`, `orch checkpoints`.

RUN is an MLflow run id or a unique run name; the store is $MLFLOW_TRACKING_URI, else
./mlflow.db, as for `orch submit`.
"""

import time

import click

from orchestrator.cli.options import emit_json, output_option, uri_option
from orchestrator.runs import lifecycle
from orchestrator.runs.run_lookup import find_run, list_runs


def _uri(uri):
    from orchestrator.runs.tracking import quiet_mlflow, tracking_uri

    quiet_mlflow()
    return tracking_uri(explicit=uri)


def _echo_json(obj) -> None:
    emit_json(obj, default=str)


def _as_json(output: str, obj) -> bool:
    """With --output json, print `obj` as the command's one JSON object and say so."""
    if output == "json":
        _echo_json(obj)
    return output == "json"


@click.command("runs")
@uri_option
@output_option
def runs_command(uri, output):
    """List orch's runs, newest first: id, name, status, epoch, best errors, where it runs."""
    uri = _uri(uri)
    rows = [lifecycle.summary(run, uri) for run in list_runs(uri)]
    if _as_json(output, {"runs": rows}):
        return
    if not rows:
        click.echo(f"no runs in {uri}")
        return
    click.echo(f"{'RUN ID':<32}  {'NAME':<24} {'STATUS':<9} {'EPOCH':>7}  {'TOP-1 ERR':>9} {'TOP-5 ERR':>9}  WHERE")
    for r in rows:
        click.echo(
            f"{r['run_id']:<32}  {r['name'][:24]:<24} {r['status']:<9} {_epoch(r):>7}  "
            f"{_pct(r['best_val_top1_error']):>9} {_pct(r['best_val_top5_error']):>9}  {r['where']}"
        )


@click.command()
@click.argument("run")
@uri_option
@output_option
def status(run, uri, output):
    """Show one run: status, epoch, best errors, restarts, checkpoints folder, where its workers
    run, and for a remote run its cluster job's state."""
    info = lifecycle.status(_uri(uri), run)
    if _as_json(output, info):
        return
    shown = dict(info, epoch=_epoch(info))
    for key in ("epochs", "workers", "preemption_log"):
        shown.pop(key)
    for key, value in shown.items():
        if value is not None:
            click.echo(f"{key.replace('_', ' '):<20} {_pct(value) if key.startswith('best_') else value}")
    for w in info["workers"] or []:
        click.echo(f"{'worker ' + str(w['rank']):<20} {w['hostname']} (node {w['node_id'][:12]})")
    from orchestrator.train.interruptions import preemption_lines

    for line in preemption_lines(info["preemption_log"]):
        click.echo(line)


@click.command()
@click.argument("run")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new epochs until the run ends.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between polls with --follow.")
@uri_option
@output_option
def logs(run, follow, interval, uri, output):
    """Print a run's epoch lines (from its MLflow metrics; for a remote run, its cluster job's
    output), then its status."""
    from mlflow.tracking import MlflowClient

    from orchestrator.console.progress import format_epoch, logged_epochs

    uri = _uri(uri)
    found = find_run(uri, run)
    if lifecycle.job_backend(found) is not None:
        _job_logs(uri, found, follow, interval, output)
        return
    run_id = found.info.run_id
    printed, rows = set(), []
    while True:
        current = MlflowClient(uri).get_run(run_id)
        info = lifecycle.summary(current, uri)
        for epoch, values in logged_epochs(uri, run_id).items():
            if epoch in printed:
                continue
            printed.add(epoch)
            rows.append({"epoch": epoch, **values})
            if output == "text":
                click.echo(format_epoch(epoch, info["epochs"] or epoch + 1, values))
        if not follow or current.info.status != lifecycle.ACTIVE:
            break
        if lifecycle.driver_alive(current) is False:
            click.echo(
                f"run {run_id} is RUNNING but its driver is gone: `orch resume {run_id}` or `orch stop {run_id}`",
                err=True,
            )
            break
        time.sleep(interval)
    if output == "json":
        _echo_json({"run_id": run_id, "status": info["status"], "epochs": rows, "restarts": info["restarts"]})
        return
    if info["restarts"]:
        click.echo(f"restarts: {info['restarts']} (last: {info['last_restart_cause']})")
    click.echo(f"run {run_id}: {info['status']}" + (f" ({info['error']})" if info["error"] else ""))


def _job_logs(uri, run, follow: bool, interval: float, output: str) -> None:
    """A remote run's logs are its cluster job's output (the entrypoint prints each epoch)."""
    from mlflow.tracking import MlflowClient

    text = []
    for chunk in lifecycle.job_log_chunks(uri, run, follow, interval):
        text.append(chunk)
        if output == "text":
            click.echo(chunk, nl=False)
    status = MlflowClient(uri).get_run(run.info.run_id).info.status
    if not _as_json(output, {"run_id": run.info.run_id, "status": status, "logs": "".join(text)}):
        click.echo(f"run {run.info.run_id}: {status}")


@click.command()
@click.argument("run")
@click.option(
    "--wait",
    "wait_s",
    default=120.0,
    show_default=True,
    help="Seconds to wait for the driver (or the cluster job) to end the run.",
)
@click.option(
    "--save",
    is_flag=True,
    help="First have the workers write a checkpoint of the step they are at and stop (within "
    "--wait seconds), so that `orch resume` loses no training.",
)
@uri_option
@output_option
def stop(run, wait_s, save, uri, output):
    """End a running job, mark its run KILLED and keep its checkpoints (resume it with `orch resume`)."""
    outcome = lifecycle.stop(_uri(uri), run, wait_s, save=save)
    if not _as_json(output, outcome):
        click.echo(f"run {outcome['run_id']}: {outcome['status']} ({outcome['how']})")


@click.command()
@click.argument("run")
@uri_option
@output_option
def checkpoints(run, uri, output):
    """List a run's kept checkpoints: path, epoch (and step, for a checkpoint within an epoch),
    metrics, size, checksum (damaged ones flagged)."""
    rows = lifecycle.checkpoints(find_run(_uri(uri), run))
    if _as_json(output, {"checkpoints": rows}):
        return
    if not rows:
        click.echo("no checkpoints")
    for c in rows:
        err = c["metrics"].get("val_top1_error")
        state = (c["sha256"] or "")[:12] if c["status"] == "ok" else f"DAMAGED: {c.get('problem')}"
        where = f"epoch {c['epoch']}" + (f" step {c['step']}" if c.get("step") is not None else "")
        click.echo(f"{c['path']}  {where}  top-1 err {_pct(err)}  {c['size_bytes'] / 1e6:.1f} MB  {state}")


def _epoch(row) -> str:
    if row["epoch"] is None:
        return "-"
    return f"{row['epoch'] + 1}/{row['epochs']}" if row["epochs"] else str(row["epoch"] + 1)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2f}%"


COMMANDS = (runs_command, status, logs, stop, checkpoints)
