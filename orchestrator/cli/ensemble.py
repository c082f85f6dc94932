"""`orch ensemble --runs R1,R2,...`: members and their combination, scored in one pass."""

import click

from orchestrator.cli.evaluate import (
    batch_size_option,
    checkpoint_option,
    data_option,
    gpus_option,
    placement,
    scales_option,
    tta_option,
    workers_option,
)
from orchestrator.cli.options import emit_json, output_option


@click.command()
@click.option(
    "--runs",
    required=True,
    metavar="R1,R2,...",
    help="Members: MLflow run ids or unique names (or checkpoint directories or URIs), at least two.",
)
@checkpoint_option
@click.option(
    "--combine",
    type=click.Choice(["softmax", "logits", "vote"]),
    default="softmax",
    show_default=True,
    help="softmax: weighted mean of probabilities; logits: of logits; vote: majority of top-1 "
    "labels, ties by mean softmax.",
)
@click.option(
    "--weights",
    metavar="W1,W2,...",
    default=None,
    help="One positive weight per run, normalized to sum to 1.  [default: equal]",
)
@tta_option
@scales_option
@data_option
@gpus_option
@workers_option
@batch_size_option
@click.option(
    "--experiment", default="orch-ensembles", show_default=True, help="MLflow experiment of the ensemble's run."
)
@click.option("--name", "run_name", default=None, help="Run name.  [default: ensemble-<N>x-<combine>-<tta>]")
@output_option
def ensemble(runs, which, combine, weights, tta, scales, data, gpus, workers, batch_size, experiment, run_name, output):
    """Evaluate an ensemble of trained runs and record it as an MLflow run.

    Members may differ in architecture and depth but must share the number of classes, the
    test preprocessing and (unless --data is given) the validation set. Each batch goes
    through every member; the table shows each member and the ensemble, with its gain over
    the best member. The MLflow run names every member's run id, checkpoint and sha256.

    Runs on the Ray cluster's GPUs when it has some (bf16), else on CPUs (fp32); see --gpus.
    Checkpoints may be stored at URIs (s3://, gs://, file://, ...), as for `orch evaluate`.
    """
    from orchestrator.evaluation import ensemble as run_ensemble
    from orchestrator.evaluation.tta import parse_scales

    outcome = run_ensemble(
        runs,
        which=which,
        combine=combine,
        weights=weights,
        tta=tta,
        scales=parse_scales(scales),
        data=data,
        gpus=gpus,
        workers=workers,
        batch_size=batch_size,
        experiment=experiment,
        run_name=run_name,
    )
    if output == "json":
        emit_json(outcome)
    else:
        click.echo(format_table(outcome))


def format_table(outcome: dict) -> str:
    members, ens = outcome["members"], outcome["ensemble"]
    rows = [("", "member", "arch", "weight", "top-1 err", "top-5 err", "loss")]
    for i, m in enumerate(members):
        name = m["run_id"] or m["checkpoint"]
        if m["run_name"]:
            name += f" ({m['run_name']})"
        rows.append(
            (
                str(i),
                name,
                m["arch"],
                f"{m['weight']:.3f}",
                f"{m['top1_error']:.2f}%",
                f"{m['top5_error']:.2f}%",
                f"{m['loss']:.4f}",
            )
        )
    loss = f"{ens['loss']:.4f}" if "loss" in ens else "-"
    rows.append(
        (
            "",
            f"ensemble ({ens['combine']}, tta {ens['tta']})",
            "",
            "1.000",
            f"{ens['top1_error']:.2f}%",
            f"{ens['top5_error']:.2f}%",
            loss,
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows
    ]
    best = members[ens["best_member"]]
    lines.append(
        f"gain over the best member ({ens['best_member']}): {ens['gain_top1_error']:+.2f} points of top-1 "
        f"error ({best['top1_error']:.2f}% -> {ens['top1_error']:.2f}%)"
    )
    lines.append(
        f"{ens['samples']:,} images of {ens['data']}, {ens['images_per_second']:,.0f} images/s "
        f"through all members on {placement(ens)}, {ens['seconds']:.1f} s in all"
    )
    lines.append(f"MLflow run {outcome['run_id']}")
    return "\n".join(lines)
