"""Pure parts of the data pipeline: schedules, shards, dataset.json, headers, atomic output."""

import json

import numpy as np
import pytest

from data_pipeline import ResolutionSchedule, num_samples, read_dataset_info, val_shard
from data_pipeline.staging import StagedOutput
from orchestrator.errors import DataError


def test_resolution_schedule_matches_ffcv_imagenet():
    s = ResolutionSchedule(min_res=160, max_res=192, start_epoch=10, end_epoch=13)
    assert [s.at(e) for e in range(0, 16)] == [160] * 11 + [160, 192] + [192] * 3
    ramp = ResolutionSchedule(128, 256, 0, 4)
    assert [ramp.at(e) for e in range(6)] == [128, 160, 192, 224, 256, 256]
    # ffcv-imagenet's defaults (start=end=0): min_res at epoch 0, max_res after
    assert [ResolutionSchedule(160, 192, 0, 0).at(e) for e in range(3)] == [160, 192, 192]


def test_resolution_schedule_rounds_to_step_within_bounds():
    s = ResolutionSchedule(100, 200, 0, 10, step=32)
    values = [s.at(e) for e in range(11)]
    assert values[0] == 100 and values[-1] == 200
    assert all(100 <= v <= 200 for v in values)
    assert all(v % 32 == 0 for v in values[1:-1] if 100 < v < 200)
    assert values == sorted(values)
    assert ResolutionSchedule(16, 48, 1, 3, step=16).at(2) == 32


@pytest.mark.parametrize("args", [(0, 10, 0, 1), (200, 100, 0, 1), (10, 20, 5, 4), (10, 20, 0, 1, 0)])
def test_resolution_schedule_rejects_bad_values(args):
    with pytest.raises(ValueError):
        ResolutionSchedule(*args)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1001, 10_000])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8, 13])
def test_val_shard_partitions(n, world):
    shards = [val_shard(n, r, world) for r in range(world)]
    assert shards[0][0] == 0 and shards[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))  # contiguous, no overlap
    sizes = [stop - start for start, stop in shards]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


def test_val_shard_examples_and_errors():
    assert [val_shard(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    for bad in [(10, 3, 3), (10, -1, 2), (10, 0, 0), (-1, 0, 1)]:
        with pytest.raises(ValueError):
            val_shard(*bad)


def _info(**overrides):
    value = {
        "name": "x",
        "classes": ["a", "b"],
        "num_classes": 2,
        "num_train": 5,
        "num_val": 3,
        "mean": [1, 2, 3],
        "std": [4, 5, 6],
        "image_size": None,
        "writer": {},
    }
    return dict(value, **overrides)


def test_keyed_draws_are_uniform_and_normal():
    """data_pipeline.rng: draws in [0, 1) with the moments of a uniform; normals with those of a
    standard normal; an image's draws depend on the key and its index, nothing else."""
    from data_pipeline.rng import epoch_key, normals, sample_key, uniform

    key = np.uint64(epoch_key(3, 1))
    draws = np.array([uniform(np.uint64(sample_key(key, i)), k) for i in range(2000) for k in range(3)])
    assert draws.min() >= 0 and draws.max() < 1
    assert abs(draws.mean() - 0.5) < 0.02 and abs(draws.var() - 1 / 12) < 0.005
    values = normals(key, np.arange(4000, dtype=np.uint64), 3)
    assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05
    assert np.array_equal(normals(key, np.array([5, 9], dtype=np.uint64), 3), values[[5, 9]])
    assert epoch_key(3, 1) != epoch_key(3, 2) != epoch_key(4, 1)


def test_read_dataset_info(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps(_info()))
    info = read_dataset_info(tmp_path / "train.beton")
    assert info.classes == ["a", "b"] and info.mean == (1.0, 2.0, 3.0) and info.image_size is None


@pytest.mark.parametrize(
    "content",
    [None, "{not json", json.dumps(_info(mean=[1, 2])), json.dumps({"name": "x"}), json.dumps(_info(num_classes=3))],
)
def test_read_dataset_info_errors_name_the_file(tmp_path, content):
    if content is not None:
        (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(DataError) as err:
        read_dataset_info(tmp_path / "train.beton")
    message = str(err.value)
    assert str(tmp_path / "dataset.json") in message and "orch data prepare" in message and "\n" not in message


def test_num_samples_rejects_non_betons(tmp_path):
    for name, content in [("a.beton", b"x" * 100), ("b.beton", np.zeros(8, np.uint32).tobytes())]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=str(tmp_path / name)):
            num_samples(tmp_path / name)
    with pytest.raises(DataError, match="no such file"):
        num_samples(tmp_path / "missing.beton")
    with pytest.raises(DataError, match="folder"):
        num_samples(tmp_path)


def test_staged_output_commits_together(tmp_path):
    out = tmp_path / "out"
    with StagedOutput(out) as staged:
        staged.path("train.beton").write_text("t")
        staged.write_json("dataset.json", {"a": 1})
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []
        staged.commit()
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "train.beton"]


def test_staged_output_cleans_up_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with StagedOutput(out) as staged:
            staged.path("train.beton").write_text("half")
            raise KeyboardInterrupt
    assert not out.exists()
    out.mkdir()
    (out / "dataset.json").write_text("old")
    with pytest.raises(RuntimeError):
        with StagedOutput(out) as staged:
            staged.path("val.beton").write_text("half")
            raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json"]


class _FailsAt:
    def __len__(self):
        return 50

    def __getitem__(self, i):
        if i == 30:
            raise OSError("disk on fire")
        return np.zeros((8, 8, 3), np.uint8), i


@pytest.mark.timeout(120)
def test_writer_reports_a_failed_worker_instead_of_hanging(tmp_path):
    from data_pipeline.beton import write_beton
    from data_pipeline.ffcv_compat import import_ffcv

    import_ffcv()  # first: it keeps ffcv from changing torch's thread count
    from ffcv.fields import RGBImageField

    with pytest.raises(DataError, match="writer process exited"):
        write_beton(
            tmp_path / "x.beton", _FailsAt(), RGBImageField(write_mode="raw"), workers=2, desc="x", chunksize=10
        )
