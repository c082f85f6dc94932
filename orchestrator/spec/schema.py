"""The job spec: one typed, validated object that every other part reads.

Unknown keys are errors (extra="forbid"), so a misspelled option never silently does nothing.
Learning rates are given per 256 images and scaled with the global batch (Goyal et al.).
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.recovery.best import DEFAULT_METRIC, DEFAULT_MODE, RANKABLE

# Paths a worker opens: made absolute when the spec is read (Ray workers run in another
# directory) and placed on the data volume for Kubernetes pods.
PATH_FIELDS = (("data", "train"), ("data", "val"), ("checkpoint", "storage"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Section):
    arch: str
    num_classes: int | None = Field(None, ge=2, description="default: the dataset's")
    options: dict[str, object] = Field(default_factory=dict)


class ResolutionSpec(_Section):
    """Progressive resizing for ImageNet-style training (ffcv-imagenet's min_res/max_res)."""

    min_res: int = Field(160, ge=8)
    max_res: int = Field(192, ge=8)
    start_epoch: int = Field(0, ge=0)
    end_epoch: int = Field(0, ge=0)
    val_res: int = Field(224, ge=8)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_res > self.max_res:
            raise ValueError("min_res must not exceed max_res")
        if self.end_epoch < self.start_epoch:
            raise ValueError("end_epoch must not be before start_epoch")
        return self


class PaperAugmentSpec(_Section):
    """`augment: paper` (section 3.4): the shorter side drawn from [short_side_min,
    short_side_max] for a 224 crop (the bounds scale with the crop), AlexNet's PCA lighting
    noise with standard deviation `lighting` (0: off). Geometry: data_pipeline/geometry.py."""

    short_side_min: int = Field(256, ge=224, description="pixels, for a 224 crop; at least the crop")
    short_side_max: int = Field(480, ge=224, description="pixels, for a 224 crop")
    lighting: float = Field(0.1, ge=0, description="std of the PCA lighting noise's alphas; 0 turns it off")

    @model_validator(mode="after")
    def _ordered(self):
        if self.short_side_min > self.short_side_max:
            raise ValueError("short_side_min must not exceed short_side_max")
        return self


class DataSpec(_Section):
    train: str
    val: str
    augment: Literal["imagenet", "paper", "cifar"] = Field(
        "imagenet",
        description="imagenet: RandomResizedCrop + flip; paper: section 3.4's scale augmentation "
        "(see paper); cifar: 4-pixel padding, random crop, flip",
    )
    paper: PaperAugmentSpec = Field(default_factory=PaperAugmentSpec)
    num_workers: int | None = Field(None, ge=1, description="loader threads per worker; default: its CPUs")
    max_train_samples: int | None = Field(None, ge=1, description="train on the file's first N images")
    max_val_samples: int | None = Field(
        None, ge=1, description="validate each epoch on the file's first N images (orch evaluate reads them all)"
    )
    in_memory: bool = Field(
        True,
        description="the .beton fits in each node's memory: read through the page cache in random order; "
        "false: FFCV reads pages itself in quasi-random order (ffcv-imagenet's choice for larger data)",
    )
    resolution: ResolutionSpec = Field(default_factory=ResolutionSpec)


class OptimizerSpec(_Section):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.1, gt=0, description="per 256 images")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)
    no_decay_norm_bias: bool = False
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class WarmupSpec(_Section):
    """The learning rate's first epochs or steps: `constant` holds factor x lr (the paper's
    ResNet-110: 0.01 for about 400 iterations, then 0.1), `linear` rises from factor x lr to
    the lr (Goyal et al.'s large-batch warm-up). Then the schedule goes on as if it had started
    at the step the warm-up ends."""

    kind: Literal["constant", "linear"] = "linear"
    epochs: float | None = Field(None, gt=0, description="its length in epochs (or give steps)")
    steps: int | None = Field(None, ge=1, description="its length in optimizer steps (or give epochs)")
    factor: float = Field(0.1, gt=0, le=1, description="constant: the lr it holds, linear: where it starts; x lr")

    @model_validator(mode="after")
    def _one_length(self):
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give the warm-up's length as epochs or as steps, one of them")
        return self


class ScheduleSpec(_Section):
    kind: Literal["step", "cosine", "constant"] = "step"
    milestones: list[float] = Field(default_factory=lambda: [30, 60, 90], description="epochs")
    factor: float = Field(0.1, gt=0, le=1)
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="cosine floor, a fraction of the lr")
    warmup: WarmupSpec | None = Field(None, description="none by default; {kind, epochs or steps, factor}")

    @model_validator(mode="before")
    @classmethod
    def _older_warmup_keys(cls, data):
        """warmup_epochs and warmup_start_factor, the keys before schedule.warmup, read as a
        linear warm-up, so that older job files and runs (orch resume reads a run's spec.json)
        keep working; where given they replace schedule.warmup (warmup_epochs: 0 turns it off)."""
        if not isinstance(data, dict) or not {"warmup_epochs", "warmup_start_factor"} & data.keys():
            return data
        data = dict(data)
        epochs = data.pop("warmup_epochs", 0) or 0
        factor = data.pop("warmup_start_factor", 0.1)
        data["warmup"] = {"kind": "linear", "epochs": epochs, "factor": factor} if epochs else None
        return data

    @model_validator(mode="after")
    def _sorted(self):
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError("milestones must be increasing")
        return self


class TrainingSpec(_Section):
    epochs: int = Field(..., ge=1)
    seed: int = 0
    batch_size: int = Field(..., ge=1, description="per worker")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = Field(
        False,
        description="PyTorch's deterministic algorithms (no cuDNN autotuning, no TF32), for GPUs, at a "
        "cost in throughput; an op without a deterministic version raises. Seeds reproduce without it: "
        "every augmentation draw is a function of (seed, epoch, image), with any number of loader threads",
    )
    max_failures: int = Field(
        0, ge=-1, description="worker-group failures Ray Train restarts from the latest checkpoint (-1: any number)"
    )
    max_preemption_failures: int = Field(
        -1,
        ge=-1,
        description="preemptions (a node drained for preemption, a SIGTERM to a worker) Ray Train restarts from "
        "the latest checkpoint, counted apart from max_failures (-1: any number, as Ray's default)",
    )
    termination_grace_s: int = Field(
        60,
        ge=5,
        description="seconds a preempted worker has from the notice to its end: the deadline a SIGTERM'd worker "
        "announces, and a Kubernetes worker pod's drain deadline (its terminationGracePeriodSeconds is this "
        "plus 15); must fit Ray's watcher poll (5 s) + notice_every_n_steps steps + one checkpoint upload",
    )
    notice_every_n_steps: int = Field(
        20,
        ge=1,
        description="every rank checks for a preemption notice or `orch stop --save` every N training steps "
        "(a notice is answered within Ray's 5 s poll + N steps + one checkpoint upload)",
    )


class ScalingSpec(_Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(1, gt=0)
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class CheckpointSpec(_Section):
    storage: str = "checkpoints"
    shared: bool = Field(False, description="checkpoint.storage is on a filesystem every node mounts (NFS, a PVC)")
    num_to_keep: int | None = Field(None, ge=1, description="best by metric, plus the latest")
    metric: Literal[RANKABLE] = Field(
        DEFAULT_METRIC, description="what 'best' means everywhere (orchestrator/recovery/best.py)"
    )
    mode: Literal["min", "max"] = DEFAULT_MODE
    every_n_steps: int | None = Field(
        None,
        ge=1,
        description="also checkpoint within epochs, every N training steps (counted over the run), "
        "for long epochs; kept under num_to_keep like epoch checkpoints",
    )


class TrackingSpec(_Section):
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    run_name: str | None = None
    system_metrics: bool = Field(
        True, description="each training node logs CPU, memory, disk, network and GPU use as system/<node>/..."
    )
    system_metrics_seconds: float = Field(10, ge=0.5, description="sampling interval of the system metrics")
    log_every_n_steps: int | None = Field(
        None,
        ge=1,
        description="log step/train_loss, step/lr and step/images_per_second every N training steps; "
        "default: a few dozen points per epoch",
    )
    log_model: bool = Field(
        True,
        description="log a FINISHED run's best checkpoint as an MLflow PyTorch model (the run's Logged models)",
    )
    register_model: str | None = Field(
        None,
        pattern=r"^[^/:\s][^/:]*$",
        description="also register that model under this name in the MLflow model registry (no '/' or ':')",
    )

    @model_validator(mode="after")
    def _registered_is_logged(self):
        if self.register_model and not self.log_model:
            raise ValueError("register_model needs log_model: true (only a logged model can be registered)")
        return self


# Kubernetes quantities ("8", "500m", "64Gi") and DNS-1123 labels, checked when the spec is
# read so that a typo is a spec error rather than an API server rejection after the MLflow run exists.
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class KubernetesSpec(_Section):
    """How `orch submit --target k8s` shapes the KubeRay RayJob (see k8s/README.md)."""

    namespace: str = Field("orch", pattern=_DNS_LABEL, description="--namespace overrides; k8s/ uses orch")
    image: str | None = Field(None, description="the training image (see Dockerfile); --image overrides")
    service_account: str = Field("orch", pattern=_DNS_LABEL, description="the pods' account (k8s/rbac.yaml)")
    gpus_per_node: int = Field(8, ge=1, description="GPUs of one worker pod; workers are grouped into pods")
    worker_memory: str = Field("128Gi", pattern=_QUANTITY, description="one worker pod's, /dev/shm included")
    head_cpu: str = Field("2", pattern=_QUANTITY)
    head_memory: str = Field("8Gi", pattern=_QUANTITY)
    shm_size: str = Field("16Gi", pattern=_QUANTITY, description="/dev/shm of a worker pod (FFCV loaders, NCCL)")
    data_claim: str = Field(
        "orch-data",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PersistentVolumeClaim with datasets and checkpoints (k8s/storage.yaml)",
    )
    data_mount: str = Field(
        "/data", pattern=r"^/", description="where the claim is mounted; relative spec paths land under it"
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow as the pods reach it; default: tracking.tracking_uri when that is a server "
        "the pods can reach, else http://mlflow:5000 (the Service of k8s/mlflow.yaml)",
    )
    ttl_seconds_after_finished: int = Field(3600, ge=0, description="how long a finished job's pods stay (logs)")


class ClusterSpec(_Section):
    """Where a job runs when it is not the embedded local Ray."""

    address: str | None = Field(None, description="Ray Jobs API, http://HEAD:8265; --address and $RAY_ADDRESS override")
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)


class JobSpec(_Section):
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    experiment: str = "orch"
    model: ModelSpec
    data: DataSpec
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    training: TrainingSpec
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
