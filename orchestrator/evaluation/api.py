"""The library behind `orch evaluate` and `orch ensemble`: resolve, check, place, run, record.

Every check that can fail on bad input runs before any Ray task starts or any MLflow run is
written, so a failed command leaves nothing behind. The device comes last among the checks:
it needs the Ray cluster, which a mistyped run name should not have to start.
"""

import os

import torch

from data_pipeline import num_samples, read_dataset_info
from data_pipeline.geometry import eval_style
from orchestrator.errors import DataError, OrchError
from orchestrator.evaluation import records, runner
from orchestrator.evaluation.scoring import COMBINES, metrics_from_counts, parse_weights
from orchestrator.evaluation.tta import make_protocol
from orchestrator.models import build_model
from orchestrator.recovery.checkpoints import CheckpointError, Member, resolve
from orchestrator.runs.tracking import tracking_uri
from orchestrator.train.checkpoint import load_model_state

DEFAULT_BATCH_SIZE = 128
ENSEMBLE_EXPERIMENT = "orch-ensembles"


def evaluate(
    ref: str,
    *,
    data: str | None = None,
    tta: str = "none",
    scales=None,
    workers: int | None = None,
    gpus: int | None = None,
    which: str = "best",
    batch_size: int = DEFAULT_BATCH_SIZE,
    log: bool = True,
) -> dict:
    """Exact top-1/top-5 error and loss of one checkpoint; logged to its run when it has one.

    gpus/workers: runner.choose_placement (None: every GPU of the cluster, else one CPU task)."""
    _check_counts(gpus, workers, batch_size)
    uri = tracking_uri()
    member = resolve(ref, which, uri)
    protocol = make_protocol(tta, member.meta["preprocess"], scales)
    data = validation_data([member], data)
    check_data(data, [member], protocol)
    request = runner.Request(data, protocol, [model_entry(member)], batch_size=batch_size)
    states = [model_state(member)]
    result = runner.run(request, states, runner.place(gpus, workers))
    outcome = {
        "run_id": member.run_id,
        "run_name": member.run_name,
        "checkpoint": member.source,
        **_copy(member),
        "epoch": member.meta.get("epoch"),
        "arch": member.meta["arch"],
        "sha256": member.sha256,
        "checksums": member.checksums,
        "data": data,
        **protocol.describe(),
        **metrics_from_counts(result["counts"][0]),
        **_speed(result),
        "logged_as": [],
    }
    if member.run_id and log:
        outcome["logged_as"] = records.log_evaluation(uri, member.run_id, outcome)
    return outcome


def ensemble(
    runs: str,
    *,
    which: str = "best",
    combine: str = "softmax",
    weights: str | None = None,
    tta: str = "none",
    scales=None,
    data: str | None = None,
    workers: int | None = None,
    gpus: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    experiment: str = ENSEMBLE_EXPERIMENT,
    run_name: str | None = None,
) -> dict:
    """Members and their combination scored in one pass; one MLflow run records it."""
    refs = parse_runs(runs)
    if combine not in COMBINES:
        raise OrchError(f"--combine {combine}: must be one of {', '.join(COMBINES)}")
    weight_list = parse_weights(weights, len(refs))
    _check_counts(gpus, workers, batch_size)
    uri = tracking_uri()
    members = [resolve(ref, which, uri) for ref in refs]
    check_distinct(members)
    check_compatible(members, data_given=data is not None)
    protocol = make_protocol(tta, members[0].meta["preprocess"], scales)
    data = validation_data(members, data)
    check_data(data, members, protocol)
    states = [model_state(m) for m in members]
    request = runner.Request(data, protocol, [model_entry(m) for m in members], weight_list, combine, batch_size)
    result = runner.run(request, states, runner.place(gpus, workers))

    member_rows = [
        _member_row(m, w, metrics_from_counts(counts))
        for m, w, counts in zip(members, weight_list, result["counts"][:-1])
    ]
    combined = metrics_from_counts(result["counts"][-1], with_loss=combine != "vote")
    best = min(range(len(members)), key=lambda i: member_rows[i]["top1_error"])
    combined.update(
        combine=combine,
        best_member=best,
        gain_top1_error=member_rows[best]["top1_error"] - combined["top1_error"],
        **protocol.describe(),
        data=data,
        checkpoint_choice=which,
        **_speed(result),
    )
    outcome = {"run_id": None, "members": member_rows, "ensemble": combined}
    outcome["run_id"] = records.record_ensemble(uri, experiment, run_name, outcome)
    return outcome


def parse_runs(text: str) -> list[str]:
    refs = [part.strip() for part in (text or "").split(",") if part.strip()]
    if len(refs) < 2:
        raise OrchError(
            f"--runs {text}: an ensemble needs at least two runs, comma-separated (for one, use `orch evaluate`)"
        )
    seen = set()
    for ref in refs:
        if ref in seen:
            raise OrchError(f"--runs: {ref} is listed twice; each member must be a different run")
        seen.add(ref)
    return refs


def check_distinct(members: list[Member]) -> None:
    """Two names for one run, or two runs sharing one checkpoint, are duplicates too."""
    for i, m in enumerate(members):
        for other in members[:i]:
            if m.source == other.source or m.checkpoint == other.checkpoint or (m.run_id and m.run_id == other.run_id):
                raise OrchError(
                    f"--runs: {other.ref} and {m.ref} are the same {m.label}; each member must be a different run"
                )


def check_compatible(members: list[Member], data_given: bool) -> None:
    """Same number (and names) of classes, same test geometry; same validation set unless --data."""
    first = members[0]
    for m in members[1:]:
        if int(m.meta["num_classes"]) != int(first.meta["num_classes"]):
            raise OrchError(
                f"{m.label} has {m.meta['num_classes']} classes but {first.label} has "
                f"{first.meta['num_classes']}; ensemble members must share the number of classes"
            )
        if m.meta.get("classes") and first.meta.get("classes") and m.meta["classes"] != first.meta["classes"]:
            raise OrchError(
                f"{m.label} names its classes differently from {first.label}; ensemble members must share the classes"
            )
        for key, value in (("augment", _test_style), ("size", lambda meta: meta["preprocess"].get("size"))):
            if value(m.meta) != value(first.meta):
                raise OrchError(
                    f"{m.label} was trained with preprocess {key} {m.meta['preprocess'].get(key)!r}, "
                    f"{first.label} with {first.meta['preprocess'].get(key)!r}; "
                    "ensemble members must share the test preprocessing"
                )
        if not data_given and _val_path(m) != _val_path(first):
            raise OrchError(
                f"{m.label} was validated on {_val_path(m)}, {first.label} on {_val_path(first)}; "
                "ensemble members must share the validation set (or pass --data)"
            )


def validation_data(members: list[Member], data: str | None) -> str:
    if data is not None:
        return os.path.abspath(os.path.expanduser(data))
    path = _val_path(members[0])
    if not path:
        raise OrchError(f"{members[0].label}: its meta.json names no validation set (spec.data.val); pass --data")
    return path


def check_data(data: str, members: list[Member], protocol) -> None:
    """The data exists, its labels fit every model, and a cifar-style set has the trained size."""
    if num_samples(data) == 0:
        raise DataError(f"{data}: has no samples")
    info = read_dataset_info(data)
    for m in members:
        if info.num_classes > int(m.meta["num_classes"]):
            raise OrchError(
                f"{data} has {info.num_classes} classes but {m.label}'s model has {m.meta['num_classes']} outputs"
            )
        if m.meta.get("classes") and list(m.meta["classes"][: info.num_classes]) != list(info.classes):
            raise OrchError(f"{data}: its classes differ from those {m.label} was trained on")
    if protocol.style == "cifar" and info.image_size != protocol.size:
        stored = f"{info.image_size}x{info.image_size} images" if info.image_size else "images of several sizes"
        raise DataError(
            f"{data}: {stored}, but the checkpoint was trained cifar-style at "
            f"{protocol.size}x{protocol.size}; pass the data it was trained for"
        )


def model_entry(member: Member) -> runner.ModelEntry:
    options = member.meta.get("spec", {}).get("model", {}).get("options", {}) or {}
    pre = member.meta["preprocess"]
    return runner.ModelEntry(
        member.meta["arch"], int(member.meta["num_classes"]), dict(options), tuple(pre["mean"]), tuple(pre["std"])
    )


def model_state(member: Member) -> dict:
    """model.pt, checked against the arch in meta.json (on the meta device: nothing allocated)."""
    entry = model_entry(member)
    try:
        state = load_model_state(member.checkpoint)
    except Exception as exc:  # a truncated or foreign file: torch raises many kinds
        raise CheckpointError(f"{member.source}/model.pt: unreadable ({type(exc).__name__})") from None
    with torch.device("meta"):
        model = build_model(entry.arch, entry.num_classes, **entry.options)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise CheckpointError(f"{member.source}/model.pt does not fit {entry.arch}: {first}") from None
    return state


def _member_row(member: Member, weight: float, metrics: dict) -> dict:
    return {
        "run_id": member.run_id,
        "run_name": member.run_name,
        "arch": member.meta["arch"],
        "checkpoint": member.source,
        **_copy(member),
        "epoch": member.meta.get("epoch"),
        "sha256": member.sha256,
        "checksums": member.checksums,
        "weight": weight,
        **metrics,
    }


def _test_style(meta: dict) -> str:
    """imagenet and paper augmentation share their test views (data_pipeline.geometry)."""
    return eval_style(meta["preprocess"].get("augment", "imagenet"))


def _val_path(member: Member) -> str | None:
    path = member.meta.get("spec", {}).get("data", {}).get("val")
    return os.path.realpath(path) if path and "://" not in path else path


def _copy(member: Member) -> dict:
    """Where a checkpoint stored at a URI was downloaded to."""
    return {"local_copy": str(member.checkpoint)} if member.source != str(member.checkpoint) else {}


def _speed(result: dict) -> dict:
    """Where it ran (device, gpus, workers, threads_per_worker, precision) and how fast."""
    keys = ("device", "gpus", "workers", "threads_per_worker", "precision", "images_per_second", "seconds")
    return {k: result[k] for k in keys}


def _check_counts(gpus: int | None, workers: int | None, batch_size: int) -> None:
    runner.check_task_flags(gpus, workers)
    if batch_size < 1:
        raise OrchError(f"--batch-size {batch_size}: must be at least 1")
