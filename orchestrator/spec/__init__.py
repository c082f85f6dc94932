"""The job spec: schema, loading with overrides, and what follows from it."""

from orchestrator.spec.load import flatten, load_spec, merge, read_layered, spec_from_dict
from orchestrator.spec.schema import JobSpec

__all__ = ["JobSpec", "flatten", "load_spec", "merge", "read_layered", "spec_from_dict"]
