"""What evaluation leaves in MLflow.

`orch evaluate` logs to the evaluated run, named by protocol: eval_<tta>_top1_error,
eval_<tta>_top5_error, eval_<tta>_loss, eval_<tta>_images_per_second, with step = the
checkpoint's epoch, and a tag orch.eval.<tta> with what was evaluated how (JSON: the
checkpoint as stored, a path or URI, and the device, GPUs, workers and precision).

`orch ensemble` creates one run (experiment "orch-ensembles" by default) only after the
evaluation succeeded: params naming each member (member<i>.run_id, .checkpoint, .sha256,
.arch, .weight) and the settings (device, gpus, workers and precision among them), tag
orch.ensemble.members (the run ids), metrics member<i>_top1_error/_top5_error/_loss and the
ensemble's top1_error, top5_error, loss, gain_top1_error, images_per_second, and the whole
outcome as the artifact ensemble.json.
"""

import json

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from orchestrator.runs.tracking import experiment_id, now_ms, quiet_mlflow
from orchestrator.tags import ENSEMBLE, ENSEMBLE_COMBINE_TAG, ENSEMBLE_MEMBERS_TAG, EVAL_TAG_PREFIX, KIND_TAG

METRIC_KEYS = ("top1_error", "top5_error", "loss")


def log_evaluation(uri: str, run_id: str, outcome: dict) -> list[str]:
    """Log an `orch evaluate` outcome to its run; returns the metric names."""
    prefix = f"eval_{outcome['tta']}_"
    step = int(outcome.get("epoch") or 0)
    values = {f"{prefix}{k}": outcome[k] for k in METRIC_KEYS}
    values[f"{prefix}images_per_second"] = outcome["images_per_second"]
    client = MlflowClient(uri)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now_ms(), step) for k, v in values.items()])
    keys = ("checkpoint", "epoch", "sha256", "data", "views", "device", "gpus", "workers", "precision", "samples")
    described = {k: outcome[k] for k in keys}
    if "scales" in outcome:
        described["scales"] = outcome["scales"]
    client.set_tag(run_id, EVAL_TAG_PREFIX + outcome["tta"], json.dumps(described)[:5000])
    return sorted(values)


def record_ensemble(uri: str, experiment: str, run_name: str | None, outcome: dict) -> str:
    """Create the FINISHED ensemble run for an outcome {"members": [...], "ensemble": {...}}."""
    quiet_mlflow()  # no "View run ..." on stdout when it ends on a server: `-o json` prints one object
    client = MlflowClient(uri)
    members, ens = outcome["members"], outcome["ensemble"]
    tags = {
        ENSEMBLE_MEMBERS_TAG: ",".join(m["run_id"] or m["checkpoint"] for m in members),
        ENSEMBLE_COMBINE_TAG: ens["combine"],
        KIND_TAG: ENSEMBLE,
    }
    run = client.create_run(
        experiment_id(client, experiment), run_name=run_name or _default_name(members, ens), tags=tags
    )
    run_id = run.info.run_id
    status = "FAILED"
    try:
        client.log_batch(run_id, metrics=_metrics(members, ens))
        params = _params(members, ens)
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=params[i : i + 100])
        client.log_dict(run_id, dict(outcome, run_id=run_id), "ensemble.json")
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    return run_id


def _params(members: list[dict], ens: dict) -> list[Param]:
    params = {
        "combine": ens["combine"],
        "tta": ens["tta"],
        "data": ens["data"],
        "device": ens["device"],
        "gpus": ens["gpus"],
        "workers": ens["workers"],
        "precision": ens["precision"],
        "members": len(members),
        "checkpoint_choice": ens["checkpoint_choice"],
    }
    if "scales" in ens:
        params["scales"] = ",".join(map(str, ens["scales"]))
    for i, m in enumerate(members):
        for key in ("run_id", "checkpoint", "sha256", "arch", "weight"):
            params[f"member{i}.{key}"] = m[key] if m[key] is not None else "(none)"
    return [Param(k, str(v)[:6000]) for k, v in params.items()]


def _metrics(members: list[dict], ens: dict) -> list[Metric]:
    now = now_ms()
    values = {f"member{i}_{k}": m[k] for i, m in enumerate(members) for k in METRIC_KEYS}
    values.update({k: ens[k] for k in METRIC_KEYS + ("gain_top1_error", "images_per_second") if k in ens})
    return [Metric(k, float(v), now, 0) for k, v in values.items()]


def _default_name(members: list[dict], ens: dict) -> str:
    return f"ensemble-{len(members)}x-{ens['combine']}-{ens['tta']}"
