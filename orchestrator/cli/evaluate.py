"""`orch evaluate RUN|CHECKPOINT`: exact top-1/top-5 error and loss of one checkpoint."""

import click

from orchestrator.cli.options import emit_json, output_option

TTA_CHOICES = ("none", "flip", "10crop", "multiscale")

tta_option = click.option(
    "--tta",
    type=click.Choice(TTA_CHOICES),
    default="none",
    show_default=True,
    help="Test-time views, softmax averaged: none; flip (and mirror); 10crop (4 corners + center, "
    "and mirrors); multiscale (fully convolutional at each of --scales).",
)
scales_option = click.option(
    "--scales",
    metavar="S1,S2,...",
    default=None,
    help="multiscale: shorter sides in pixels.  [default: the paper's 224,256,384,480,640 scaled by test size/224]",
)
data_option = click.option(
    "--data",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="VAL.beton",
    help="Validation set.  [default: the one the run was trained with, spec data.val]",
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="CPU Ray tasks (fp32), even on a cluster with GPUs; each scores a contiguous shard, counts are "
    "summed. Not with --gpus N>0.  [default: 1, when evaluating on CPUs]",
)
gpus_option = click.option(
    "--gpus",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="GPU Ray tasks, one GPU each (bf16); each scores a contiguous shard, counts are summed. "
    "0: CPUs (--workers).  [default: every GPU of the Ray cluster; CPUs when it has none]",
)
checkpoint_option = click.option(
    "--checkpoint",
    "which",
    type=click.Choice(["best", "latest"]),
    default="best",
    show_default=True,
    help="Within a run: best by the run's checkpoint.metric and checkpoint.mode (default: lowest "
    "val_top1_error; ties: the later epoch), or latest by epoch.",
)
batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Images per batch (each gives one batch per view).",
)


@click.command()
@click.argument("target", metavar="RUN|CHECKPOINT")
@data_option
@tta_option
@scales_option
@gpus_option
@workers_option
@checkpoint_option
@batch_size_option
@output_option
def evaluate(target, data, tta, scales, gpus, workers, which, batch_size, output):
    """Evaluate a checkpoint exactly (every validation image counted once) on Ray, on its
    GPUs when it has some.

    RUN is an MLflow run id or a unique run name; CHECKPOINT is a checkpoint directory (with
    meta.json) or a run's directory of epoch_NNNN checkpoints, as a local path or a URI
    (s3://, gs://, file://, ... read with pyarrow, as Ray Train writes them). Checkpoints at
    a URI are downloaded to ~/.cache/orch/checkpoints ($XDG_CACHE_HOME) and verified there.
    The metrics are logged to the run as eval_<tta>_top1_error, eval_<tta>_top5_error,
    eval_<tta>_loss and eval_<tta>_images_per_second, at step = the checkpoint's epoch.
    """
    from orchestrator.evaluation import evaluate as run_evaluation
    from orchestrator.evaluation.tta import parse_scales

    outcome = run_evaluation(
        target,
        data=data,
        tta=tta,
        scales=parse_scales(scales),
        gpus=gpus,
        workers=workers,
        which=which,
        batch_size=batch_size,
    )
    if output == "json":
        emit_json(outcome)
    else:
        click.echo(format_evaluation(outcome))


def format_evaluation(o: dict) -> str:
    run = f"run {o['run_id']} ({o['run_name']})" if o["run_id"] else "checkpoint (no MLflow run names it)"
    views = f"{o['views']} view{'s' if o['views'] > 1 else ''}"
    if "scales" in o:
        views += f" at {','.join(map(str, o['scales']))}"
    lines = [
        f"{run}",
        f"  checkpoint   {o['checkpoint']}  "
        f"(epoch {o['epoch']}, {o['arch']}, sha256 {o['sha256'][:12]} {o['checksums']})",
        *([f"  local copy   {o['local_copy']}"] if "local_copy" in o else []),
        f"  data         {o['data']}  ({o['samples']:,} images)",
        f"  protocol     {o['tta']}, {o['style']} style, test size {o['size']}, {views}",
        f"  top-1 error  {o['top1_error']:.2f}%",
        f"  top-5 error  {o['top5_error']:.2f}%",
        f"  loss         {o['loss']:.4f}",
        f"  ran on       {placement(o)}",
        f"  speed        {o['images_per_second']:,.0f} images/s ({o['seconds']:.1f} s in all)",
    ]
    if o["logged_as"]:
        lines.append(f"  logged       {', '.join(o['logged_as'])}")
    return "\n".join(lines)


def placement(o: dict) -> str:
    """E.g. "2 GPUs (cuda, bf16), 8 CPU threads each" or "1 CPU worker (fp32), 2 threads"."""
    if o["device"] == "cuda":
        return f"{o['gpus']} GPU{'s' if o['gpus'] > 1 else ''} (cuda, bf16), {o['threads_per_worker']} CPU threads each"
    workers = f"{o['workers']} CPU worker{'s' if o['workers'] > 1 else ''}"
    return f"{workers} ({o['precision']}), {o['threads_per_worker']} threads each"
