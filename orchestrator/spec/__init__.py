"""The job spec: schema, loading with overrides, and the checks before a job starts (preflight).
May import: models, data_pipeline, train (schedule and precision: preflight describes the learning rate and
what training.precision picks).
"""

from orchestrator.spec.load import flatten, load_spec, merge, read_layered, spec_from_dict
from orchestrator.spec.schema import JobSpec

__all__ = ["JobSpec", "flatten", "load_spec", "merge", "read_layered", "spec_from_dict"]
