"""`orch models`: the paper's architectures with their parameter counts and multiply-adds."""

import click
import torch

from orchestrator.cli.options import emit_json
from orchestrator.models import arch_info, build_model, count_parameters, default_input_size, list_archs
from orchestrator.models.complexity import layer_output_shapes, macs_of, macs_with_stride_in_v1

DEFAULT_CLASSES = {"imagenet": 1000, "cifar": 10}
COLUMNS = ("arch", "family", "block", "shortcut", "input", "classes", "params", "GMACs", "GMACs v1")


@click.command()
@click.argument("archs", nargs=-1, metavar="[ARCH]...")
@click.option(
    "--input-size",
    type=click.IntRange(min=1),
    metavar="N",
    help="Image side in pixels.  [default: 224 for ImageNet nets, 32 for CIFAR nets]",
)
@click.option(
    "--num-classes",
    type=click.IntRange(min=1),
    metavar="K",
    help="Outputs of the fc layer.  [default: 1000 for ImageNet nets, 10 for CIFAR nets]",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json: one JSON object on stdout, exact counts.",
)
def models(archs, input_size, num_classes, output):
    """List the architectures (or just ARCH..., any cifar_resnet{6n+2} depth too) with
    parameters and multiply-adds of the convs and fc for one image.

    Each net has its default options: shortcut B on ImageNet, A on CIFAR (plain nets have
    none), stride_in v1.5. Bottleneck nets also show the MACs with stride_in v1 (the paper's).
    """
    rows = [_describe(arch, input_size, num_classes) for arch in archs or list_archs()]
    if output == "json":
        emit_json({"models": rows})
    else:
        click.echo(_table(rows))


def _describe(arch: str, input_size: int | None, num_classes: int | None) -> dict:
    info = arch_info(arch)
    size = input_size or default_input_size(arch)
    classes = num_classes or DEFAULT_CLASSES[info.family]
    with torch.device("meta"):  # shapes are all that counting needs: no weights, no compute
        model = build_model(arch, classes)
    shapes = layer_output_shapes(model, size)
    row = {
        "arch": info.name,
        "family": info.family,
        "block": "bottleneck" if info.bottleneck else "basic",
        "shortcut": info.default_shortcut,
        "input_size": size,
        "num_classes": classes,
        "params": count_parameters(model),
        "macs": macs_of(shapes),
    }
    if info.bottleneck:
        row["macs_v1"] = macs_with_stride_in_v1(model, shapes)
    return row


def _table(rows: list[dict]) -> str:
    cells = [COLUMNS] + [
        (
            row["arch"],
            row["family"],
            row["block"],
            row["shortcut"] or "-",
            str(row["input_size"]),
            str(row["num_classes"]),
            f"{row['params']:,}",
            _gmacs(row["macs"]),
            _gmacs(row.get("macs_v1")),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    # Text columns align left, numbers right.
    lines = [
        "  ".join(cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
        for line in cells
    ]
    lines.append("GMACs: multiply-adds of the convs and fc for one image, in billions (stride_in v1.5);")
    lines.append("GMACs v1: the same with stride_in v1 (stride in the first 1x1, as the paper), bottlenecks only.")
    return "\n".join(lines)


def _gmacs(macs: int | None) -> str:
    return "-" if macs is None else f"{macs / 1e9:.3f}"
