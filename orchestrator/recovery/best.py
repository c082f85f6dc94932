"""The one rule for "best": the epoch whose `checkpoint.metric` is lowest (`checkpoint.mode:
min`) or highest (`max`), ties going to the later epoch.

Ray Train's checkpoint retention is configured with the same metric and mode; the run's
`best_*` metrics, `orch runs`/`orch status`, the run's best checkpoint and `--checkpoint best`
in `orch evaluate`/`orch ensemble` all choose through `BestRule.pick`. Imports nothing heavy:
the spec schema reads RANKABLE from here.
"""

import sys
from dataclasses import dataclass

# Per-epoch metrics the training loop reports that can rank checkpoints (checkpoint.metric).
RANKABLE = ("val_top1_error", "val_top5_error", "val_loss", "train_loss")
DEFAULT_METRIC, DEFAULT_MODE = "val_top1_error", "min"


@dataclass(frozen=True)
class BestRule:
    metric: str = DEFAULT_METRIC
    mode: str = DEFAULT_MODE  # "min" | "max"

    @classmethod
    def of(cls, checkpoint_section) -> "BestRule":
        """The rule of a spec's `checkpoint` section: a CheckpointSpec or its dict (meta.json's
        spec); a spec written before the rule existed gets the default."""
        if isinstance(checkpoint_section, dict):
            return cls(checkpoint_section.get("metric", DEFAULT_METRIC), checkpoint_section.get("mode", DEFAULT_MODE))
        return cls(checkpoint_section.metric, checkpoint_section.mode)

    def pick(self, scored):
        """The best of (epoch, value, item) triples, or None when there are none; value None
        (the metric was not recorded) never wins."""
        ranked = [(epoch, value, item) for epoch, value, item in scored if value is not None]
        if not ranked:
            return None
        sign = 1 if self.mode == "min" else -1
        return min(ranked, key=lambda t: (sign * float(t[1]), -t[0]))[2]

    def best_epoch(self, history: dict[int, float]) -> int | None:
        """The best epoch of {epoch: value of the rule's metric}."""
        return self.pick([(epoch, value, epoch) for epoch, value in history.items()])

    def never_best(self) -> float:
        """A score that ranks below every real one under this rule, for Ray's retention of a
        checkpoint that was not validated (a step checkpoint). Finite: Ray's record stores NaN
        and infinities as null, which it cannot rank once read back."""
        return sys.float_info.max if self.mode == "min" else -sys.float_info.max

    def describe(self) -> str:
        return f"{'lowest' if self.mode == 'min' else 'highest'} {self.metric}"
