"""The training loop's loaders on a real .beton whose label is the sample index."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from data_pipeline import ResolutionSchedule, build_train_loader, build_val_loader

from data_fixtures import write_index_beton
from job_fixtures import ROOT

N = 1001
# Several FFCV loaders in one process: numba's dispatcher finalizer raises a harmless KeyError
# when they are garbage-collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def index_beton(tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "index.beton"
    dataset = write_index_beton(path, N, size=16)
    pixels = dataset.images.reshape(-1, 3).astype(np.float64)
    return path, tuple(pixels.mean(axis=0)), tuple(pixels.std(axis=0))


@pytest.fixture(scope="module")
def cifar_train(index_beton):
    path, mean, std = index_beton
    return build_train_loader(path, augment="cifar", batch_size=64, num_workers=2, seed=7, mean=mean, std=std)


@pytest.fixture(scope="module")
def imagenet_train(index_beton):
    path, mean, std = index_beton
    schedule = ResolutionSchedule(min_res=16, max_res=48, start_epoch=1, end_epoch=3, step=16)
    return build_train_loader(
        path,
        augment="imagenet",
        batch_size=50,
        num_workers=2,
        seed=0,
        mean=mean,
        std=std,
        resolution=schedule,
        max_samples=500,
        channels_last=True,
    )


def epoch_labels(loader, epoch: int) -> np.ndarray:
    loader.set_epoch(epoch)
    return np.concatenate([labels.numpy().copy() for _, labels in loader])


@pytest.mark.parametrize("world_size, max_samples", [(1, None), (2, None), (3, None), (2, 37)])
def test_validation_sees_every_sample_once(index_beton, world_size, max_samples):
    """Every sample once across the ranks; with max_samples (data.max_val_samples), the file's first N."""
    path, mean, std = index_beton
    seen = []
    for rank in range(world_size):
        loader = build_val_loader(
            path,
            max_samples=max_samples,
            augment="cifar",
            batch_size=100,
            num_workers=2,
            mean=mean,
            std=std,
            rank=rank,
            world_size=world_size,
            channels_last=world_size != 1,
        )
        batches = [(x.shape, x.is_contiguous(), y.numpy().copy()) for x, y in loader]
        assert sum(len(y) for _, _, y in batches) == loader.num_samples and len(batches) == len(loader)
        assert all(shape[1:] == (3, 16, 16) for shape, _, _ in batches)
        if world_size == 1:  # channels_last=False: plain contiguous NCHW
            assert all(contiguous for _, contiguous, _ in batches)
        seen += [y for _, _, y in batches]
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(max_samples or N))  # each once, in file order


def test_validation_imagenet_center_crop(index_beton):
    path, mean, std = index_beton
    loader = build_val_loader(
        path, augment="imagenet", batch_size=128, num_workers=2, mean=mean, std=std, resolution=24, rank=1, world_size=2
    )
    batches = list(loader)
    assert (loader.num_samples, len(loader)) == (500, 4)
    images, labels = batches[0]
    assert images.shape == (128, 3, 24, 24) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels[0].item() == 501 and batches[-1][1].shape == (500 - 3 * 128,)


def test_train_batches(cifar_train):
    assert len(cifar_train) == N // 64 and cifar_train.batch_size == 64
    assert cifar_train.resolution == 16
    cifar_train.set_epoch(0)
    count = 0
    for images, labels in cifar_train:
        assert images.shape == (64, 3, 16, 16) and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert labels.shape == (64,) and labels.dtype == torch.int64
        count += 1
    assert count == len(cifar_train)


def test_set_epoch_gives_a_deterministic_shuffle(cifar_train):
    first = epoch_labels(cifar_train, 3)
    assert len(np.unique(first)) == len(first) == (N // 64) * 64  # no sample twice in an epoch
    assert not np.array_equal(first, np.sort(first))
    np.testing.assert_array_equal(epoch_labels(cifar_train, 3), first)  # a resumed epoch 3
    assert not np.array_equal(epoch_labels(cifar_train, 4), first)


def views_by_index(loader, epoch: int) -> dict:
    """{image index (its label here): its augmented view} over one epoch."""
    loader.set_epoch(epoch)
    return {int(y): x.clone() for images, labels in loader for x, y in zip(images, labels)}


@pytest.mark.parametrize("augment", ["cifar", "imagenet", "paper"])
def test_every_draw_is_a_function_of_seed_epoch_and_image(index_beton, augment):
    """Crops, flips and lighting are keyed by the loader's seed, the epoch and the image's index
    (data_pipeline.rng): with 1 or 2 loader threads and any batch size, an image gets the same
    view, as a second run of the spec or a resumed epoch builds it; another seed or epoch draws anew."""
    path, mean, std = index_beton
    extra = {} if augment == "cifar" else {"resolution": ResolutionSchedule(16, 16, 0, 0)}

    def loader(threads: int, batch_size: int, seed: int = 5):
        return build_train_loader(
            path, augment=augment, batch_size=batch_size, num_workers=threads, seed=seed, mean=mean, std=std, **extra
        )

    two_threads = loader(2, 50)
    first, second = views_by_index(loader(1, 64), 1), views_by_index(two_threads, 1)
    shared = sorted(set(first) & set(second))
    assert len(shared) > 900
    assert all(torch.equal(first[i], second[i]) for i in shared)
    other_seed, next_epoch = views_by_index(loader(2, 50, seed=6), 1), views_by_index(two_threads, 2)
    assert sum(not torch.equal(other_seed[i], second[i]) for i in shared if i in other_seed) > 0.4 * len(shared)
    assert sum(not torch.equal(next_epoch[i], second[i]) for i in shared if i in next_epoch) > 0.4 * len(shared)


def test_a_skipping_pass_hands_the_rest_of_the_epoch_drawn_alike(index_beton):
    """After a step checkpoint: the batches it trained are left out, and the rest come in the
    same order with the same crops and flips as in the uninterrupted epoch."""
    path, mean, std = index_beton
    loader = build_train_loader(path, augment="cifar", batch_size=64, num_workers=1, seed=5, mean=mean, std=std)

    def batches(skip: int) -> list:
        loader.set_epoch(2, skip_batches=skip)
        return [(images.clone(), labels.clone()) for images, labels in loader]

    whole, rest = batches(0), batches(3)
    assert len(whole) == len(loader) and len(rest) == len(loader) - 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[3:], rest))
    assert len(batches(0)) == len(loader)  # the next pass starts whole again
    with pytest.raises(ValueError, match="skip_batches"):
        loader.set_epoch(2, skip_batches=len(loader))


def test_normalization(imagenet_train):
    imagenet_train.set_epoch(5)
    images = torch.cat([x.clone() for x, _ in imagenet_train])
    per_channel = images.mean(dim=(0, 2, 3))
    assert torch.all(per_channel.abs() < 0.1), per_channel
    assert 0.5 < images.std().item() < 1.2


def test_progressive_resolution_and_max_samples(imagenet_train):
    assert len(imagenet_train) == 10 and imagenet_train.batch_size == 50
    for epoch, res in [(0, 16), (2, 32), (3, 48), (0, 16)]:
        imagenet_train.set_epoch(epoch)
        assert imagenet_train.resolution == res
        batches = [
            (x.shape, x.is_contiguous(memory_format=torch.channels_last), y.max().item()) for x, y in imagenet_train
        ]
        assert len(batches) == 10
        assert all(shape == (50, 3, res, res) and last and top < 500 for shape, last, top in batches)


def test_torch_threads_left_alone(cifar_train):
    before = torch.get_num_threads()
    epoch_labels(cifar_train, 0)
    assert torch.get_num_threads() == before


def test_distributed_shards_with_the_process_group(index_beton, tmp_path):
    import torch.distributed as dist

    path, mean, std = index_beton
    with pytest.raises(RuntimeError, match="process group"):
        build_train_loader(
            path, augment="cifar", batch_size=64, num_workers=1, seed=0, mean=mean, std=std, distributed=True
        )
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = build_train_loader(
            path, augment="cifar", batch_size=100, num_workers=1, seed=0, mean=mean, std=std, distributed=True
        )
        labels = epoch_labels(loader, 1)
        assert len(loader) == 10 and len(np.unique(labels)) == 1000
    finally:
        dist.destroy_process_group()


def test_cifar_needs_one_image_size(tmp_path):
    from data_pipeline import write_imagefolder
    from data_pipeline.imagefolder import WriterOptions
    from orchestrator.errors import DataError

    from data_fixtures import make_image_folder

    make_image_folder(tmp_path / "train", per_class=2)
    make_image_folder(tmp_path / "val", per_class=1)
    write_imagefolder(tmp_path / "train", tmp_path / "val", tmp_path / "out", WriterOptions(workers=1))
    with pytest.raises(DataError, match="one size"):
        build_train_loader(
            tmp_path / "out" / "train.beton",
            augment="cifar",
            batch_size=2,
            num_workers=1,
            seed=0,
            mean=(0, 0, 0),
            std=(1, 1, 1),
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_pipeline(index_beton):
    path, mean, std = index_beton
    train = build_train_loader(
        path,
        augment="imagenet",
        batch_size=64,
        num_workers=2,
        seed=0,
        mean=mean,
        std=std,
        resolution=ResolutionSchedule(32, 32, 0, 0),
        device="cuda:0",
    )
    train.set_epoch(0)
    for images, labels in train:
        assert images.device.type == "cuda" and labels.device.type == "cuda"
        assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert images.mean().abs().item() < 0.2
    val = build_val_loader(path, augment="cifar", batch_size=100, num_workers=2, mean=mean, std=std, device="cuda:0")
    labels = torch.cat([y.clone() for _, y in val]).cpu().numpy()
    np.testing.assert_array_equal(labels, np.arange(N))


CACHED_PIPELINES = """
import hashlib, sys
from data_pipeline import ResolutionSchedule, build_train_loader, build_val_loader, read_dataset_info
data = sys.argv[1]
info = read_dataset_info(data + "/train.beton")
common = dict(augment="cifar", batch_size=100, num_workers=1, mean=info.mean, std=info.std, device="cpu",
              channels_last=True)
train = build_train_loader(data + "/train.beton", seed=0, resolution=ResolutionSchedule(160, 192, 0, 0),
                           distributed=False, max_samples=None, **common)
labels = hashlib.sha256(b"".join(y.numpy().tobytes() for _, y in train)).hexdigest()
val = build_val_loader(data + "/val.beton", resolution=224, rank=0, world_size=1, **common)
print(labels, hashlib.sha256(b"".join(x.numpy().tobytes() for x, _ in val)).hexdigest())
"""


def test_compiled_pipelines_are_cached_for_later_processes(small_fashion, tmp_path):
    """The first process compiles FFCV's operations into numba's on-disk cache; a later one loads
    them (no cache file is written again) and gets the same batches."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def run() -> tuple[str, dict]:
        proc = subprocess.run(
            [sys.executable, "-c", CACHED_PIPELINES, str(small_fashion)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.nb[ic]")}
        return proc.stdout.split()[-2:], files

    first, written = run()
    assert any(p.suffix == ".nbc" for p in written)
    second, after = run()
    assert second == first and after == written
