"""Error curves drawn as the paper's Fig. 4 (ImageNet) and Fig. 6 (CIFAR-10) draw them: top-1
error (%) against epochs, training error thin and dashed, validation error bold and solid, one
colour per depth, plain nets on the left and residual nets on the right (one panel when only
one kind ran). Each configuration's curve is the mean over its seeds. One PNG per dataset.

Figures are drawn with matplotlib's object API on its Agg canvas, never through pyplot, so no
backend or global figure state is touched (the same code runs in a CLI, a test or a server).
"""

import re
from pathlib import Path

MARKERS = (None, "o", "s", "^", "D", "v")


def plot_curves(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per dataset of the rows that have curves; returns their paths."""
    datasets = sorted({row["dataset"] for row in rows if row["curves"]["val_top1_error"]["epochs"]})
    return [_plot_dataset(dataset, [r for r in rows if r["dataset"] == dataset], out_dir) for dataset in datasets]


def _plot_dataset(dataset: str, rows: list[dict], out_dir: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(title, rs) for title, rs in _panels(rows) if rs]
    figure = Figure(figsize=(6.4 * len(panels), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    colours = _colours(rows)
    grid = figure.subplots(1, len(panels), squeeze=False, sharey=True)[0]  # one error scale, as in the paper
    for axes, (title, panel_rows) in zip(grid, panels):
        _draw_panel(axes, f"{dataset}: {title}", panel_rows, colours)
    path = Path(out_dir) / f"curves-{_slug(dataset)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _panels(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    return [
        ("plain networks", [r for r in rows if r["residual"] is False]),
        ("ResNets", [r for r in rows if r["residual"] is True]),
        ("other networks", [r for r in rows if r["residual"] is None]),
    ]


def _colours(rows: list[dict]) -> dict:
    """One colour per depth (the same in both panels), from matplotlib's default cycle."""
    from matplotlib import rcParams

    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    depths = sorted({row["depth"] or 0 for row in rows})
    return {depth: cycle[i % len(cycle)] for i, depth in enumerate(depths)}


def _draw_panel(axes, title: str, rows: list[dict], colours: dict) -> None:
    from matplotlib.ticker import MaxNLocator

    seen: dict[int, int] = {}
    for row in sorted(rows, key=lambda r: (r["depth"] or 0, r["label"])):
        depth = row["depth"] or 0
        marker = MARKERS[seen.get(depth, 0) % len(MARKERS)]  # a second configuration of one depth
        seen[depth] = seen.get(depth, 0) + 1
        style = {"color": colours[depth], "marker": marker, "markersize": 4}
        train = row["curves"]["train_top1_error"]
        if train["epochs"]:
            axes.plot([e + 1 for e in train["epochs"]], train["mean"], linestyle="--", linewidth=1, **style)
        val = row["curves"]["val_top1_error"]
        axes.plot([e + 1 for e in val["epochs"]], val["mean"], linewidth=2.5, label=_legend(row), **style)
    axes.set_title(f"{title}\n(dashed: training error, bold: validation error; mean over seeds)", fontsize=10)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epochs")
    axes.set_ylabel("top-1 error (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)


def _legend(row: dict) -> str:
    extra = {k: v for k, v in row["config"].items() if k != "model.arch"}
    text = row["name"] + "".join(f", {k.split('.')[-1]}={v}" for k, v in extra.items())
    return f"{text} (n={row['n']})"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "data"
