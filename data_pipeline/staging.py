"""Output files written under temporary names and renamed into place together at the end.

An interrupted or failed `orch data prepare` leaves only hidden `.NAME.partial-PID` files
(removed on the way out when Python gets the chance), never a `train.beton` or a
`dataset.json` that looks finished.
"""

import json
import os
from pathlib import Path

from orchestrator.errors import DataError

# Renamed last: read_dataset_info needs it, so its presence means the set is complete.
MARKER = "dataset.json"


def check_out_dir(out: Path) -> None:
    """Fail before any work when OUT cannot become the output folder."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is a file, not a folder; pass a folder to write into")


class StagedOutput:
    """Collects files for OUT; commit() renames them in, cleanup removes what was not committed."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self._staged: dict[str, Path] = {}
        self._created_dir = False

    def __enter__(self) -> "StagedOutput":
        check_out_dir(self.out)
        if not self.out.exists():
            self.out.mkdir(parents=True)
            self._created_dir = True
        return self

    def path(self, name: str) -> Path:
        """Where to write NAME for now: a hidden temporary name in OUT (same file system)."""
        staged = self.out / f".{name}.partial-{os.getpid()}"
        self._staged[name] = staged
        return staged

    def write_json(self, name: str, value) -> None:
        with open(self.path(name), "w") as f:
            json.dump(value, f, indent=2)
            f.write("\n")

    def commit(self) -> None:
        # A stale marker from an earlier write would vouch for a mix of old and new files.
        (self.out / MARKER).unlink(missing_ok=True)
        names = sorted(self._staged, key=lambda n: n == MARKER)
        for name in names:
            os.replace(self._staged.pop(name), self.out / name)

    def __exit__(self, exc_type, exc, tb) -> None:
        for staged in self._staged.values():
            staged.unlink(missing_ok=True)
        self._staged.clear()
        if exc_type is not None and self._created_dir and not any(self.out.iterdir()):
            self.out.rmdir()
