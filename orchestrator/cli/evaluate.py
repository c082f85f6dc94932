"""`orch evaluate RUN|CHECKPOINT`: exact top-1/top-5 error and loss of one checkpoint."""

import json

import click

from orchestrator.cli.options import output_option

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
    default=1,
    show_default=True,
    help="Ray tasks; each scores a contiguous shard, counts are summed.",
)
checkpoint_option = click.option(
    "--checkpoint",
    "which",
    type=click.Choice(["best", "latest"]),
    default="best",
    show_default=True,
    help="Within a run: best by val_top1_error, or latest by epoch.",
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
@workers_option
@checkpoint_option
@batch_size_option
@output_option
def evaluate(target, data, tta, scales, workers, which, batch_size, output):
    """Evaluate a checkpoint exactly (every validation image counted once) on Ray.

    RUN is an MLflow run id or a unique run name; CHECKPOINT is a checkpoint directory (with
    meta.json) or a run's directory of epoch_NNNN checkpoints. The metrics are logged to the
    run as eval_<tta>_top1_error, eval_<tta>_top5_error, eval_<tta>_loss and
    eval_<tta>_images_per_second, at step = the checkpoint's epoch.
    """
    from orchestrator.evaluation import evaluate as run_evaluation
    from orchestrator.evaluation.tta import parse_scales

    outcome = run_evaluation(
        target, data=data, tta=tta, scales=parse_scales(scales), workers=workers, which=which, batch_size=batch_size
    )
    if output == "json":
        click.echo(json.dumps(outcome))
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
        f"  data         {o['data']}  ({o['samples']:,} images)",
        f"  protocol     {o['tta']}, {o['style']} style, test size {o['size']}, {views}",
        f"  top-1 error  {o['top1_error']:.2f}%",
        f"  top-5 error  {o['top5_error']:.2f}%",
        f"  loss         {o['loss']:.4f}",
        f"  speed        {o['images_per_second']:,.0f} images/s over {o['workers']} worker(s) "
        f"x {o['threads_per_worker']} threads ({o['seconds']:.1f} s in all)",
    ]
    if o["logged_as"]:
        lines.append(f"  logged       {', '.join(o['logged_as'])}")
    return "\n".join(lines)
