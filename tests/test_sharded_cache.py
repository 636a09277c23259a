"""Sharded caches under DDP: every rank extracts a slice, rank 0 assembles one process's exact file."""

import json
import threading
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import assert_ok, compose_config, run_entry_point
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from pneumonia_cam.data import disk_cache
from pneumonia_cam.data.dataset import XrayDataset
from pneumonia_cam.data.disk_cache import ONE_PROCESS, Ranks, load_or_build
from pneumonia_cam.data.feature_cache import FeatureCache, FeatureCacheConfig, View, _SeededView
from pneumonia_cam.data.image_cache import ImageCache
from pneumonia_cam.models.encoder import backbone_encoder
from pneumonia_cam.models.net import ChestXrayNet

pytestmark = pytest.mark.slow  # the caches fixture spawns 2 gloo ranks
SIZE = 32
N_IMAGES = 10
BATCH = 3  # 4 batches (the last one partial): rank 0 extracts rows 0-5, rank 1 rows 6-9
EVAL = A.Compose(
    [A.Resize(SIZE, SIZE), A.ToRGB(num_output_channels=3), A.Normalize(), A.pytorch.ToTensorV2()]
)
AUGMENT = A.Compose([A.Affine(rotate=(-30, 30), translate_percent=(-0.1, 0.1), p=1.0), *EVAL.transforms])
PREPROCESS = A.Compose([A.CLAHE(clip_limit=(2.0, 2.0), p=1.0), A.Resize(SIZE, SIZE)])
SPLITS: dict[str, list[View]] = {"train": [(AUGMENT, 7)] * 2, "val": [(EVAL, None)]}  # 2 train views


def read_grey(path: str) -> np.ndarray:
    """Files read as grey uint8."""
    return cv2.imread(path, cv2.IMREAD_GRAYSCALE)


def build_caches(root: Path, ranks: Ranks) -> list[int]:
    """The feature caches of SPLITS and the image cache, built by this process as `ranks` says.

    Returns how many images this process sent through the backbone.
    """
    torch.manual_seed(0)
    net = ChestXrayNet("resnet10", None)
    calls = [0]
    net.features.register_forward_hook(lambda _m, inputs, _o: calls.__setitem__(0, calls[0] + len(inputs[0])))
    config = FeatureCacheConfig(enabled=True, dir=str(root / "features"), precision="fp32", batch_size=BATCH)
    cache = FeatureCache(config, backbone_encoder(net, config.precision), ranks=ranks)
    records = json.loads((root.parent / "records.json").read_text())
    for name, views in SPLITS.items():
        dataset = XrayDataset(pd.DataFrame(records), read_grey, views[0][0])
        cache.features(dataset, views, name)
    paths = [record["path"] for record in records]
    ImageCache.build(paths, read_grey, PREPROCESS, root / "images", threads=1, ranks=ranks)
    return calls[0]


def _rank_main(rank: int, world: int, root: Path, threads: int) -> None:
    """One DDP rank: a real gloo process group, its barrier, then the same calls as one process (with its
    intra-op thread count, on which the float kernels' bits depend: under pytest-xdist a worker has 1)."""
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo", init_method=f"file://{root.parent / 'rendezvous'}", rank=rank, world_size=world
    )
    try:
        calls = build_caches(root, Ranks(rank, world, dist.barrier, tag="run"))
        (root / f"calls-{rank}.json").write_text(json.dumps(calls))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[int], int]:
    """The same caches built by one process and by 2 spawned gloo ranks; backbone calls of each."""
    base = tmp_path_factory.mktemp("sharded")
    rng = np.random.default_rng(0)
    records = []
    for index in range(N_IMAGES):
        path = base / "images" / f"img{index}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (40, 40), dtype=np.uint8))
        records.append({"path": str(path), "label": index % 2})
    (base / "records.json").write_text(json.dumps(records))
    single, sharded = base / "single", base / "sharded"
    sharded.mkdir()
    single_calls = build_caches(single, ONE_PROCESS)
    mp.spawn(_rank_main, args=(2, sharded, torch.get_num_threads()), nprocs=2, join=True)
    rank_calls = [json.loads((sharded / f"calls-{rank}.json").read_text()) for rank in range(2)]
    return single, sharded, rank_calls, single_calls


def cache_files(folder: Path) -> list[str]:
    """Every file of a cache folder, by name."""
    return sorted(path.name for path in folder.iterdir())


def assert_same_cache(single: Path, sharded: Path) -> None:
    """Same file names, byte-identical arrays, same metadata but for the creation time."""
    assert cache_files(single) == cache_files(sharded)
    for name in cache_files(single):
        if name.endswith(".npy"):
            assert (single / name).read_bytes() == (sharded / name).read_bytes(), name
        else:
            one, other = (json.loads((folder / name).read_text()) for folder in (single, sharded))
            one.pop("created"), other.pop("created")
            assert one == other


def test_sharded_feature_cache_is_byte_identical(caches):
    """2 gloo ranks, 2 train views + 1 val view: each rank extracts its batches, the assembly is bit-exact."""
    single, sharded, rank_calls, single_calls = caches
    assert len(cache_files(single / "features")) == 4  # train and val: <key>.npy + <key>.json each
    assert_same_cache(single / "features", sharded / "features")
    views = sum(len(views) for views in SPLITS.values())
    assert single_calls == views * N_IMAGES
    assert rank_calls == [views * 6, views * 4]  # whole batches of 3: rows 0-5 and 6-9 of every view


def test_sharded_image_cache_is_byte_identical(caches):
    """The image cache assembled from 2 ranks' shards equals one process's, and serves the same pixels."""
    single, sharded, _, _ = caches
    assert_same_cache(single / "images", sharded / "images")
    array = np.load(next((sharded / "images").glob("*.npy")))
    assert array.shape == (N_IMAGES, SIZE, SIZE) and array.dtype == np.uint8
    first = json.loads((single.parent / "records.json").read_text())[0]["path"]
    np.testing.assert_array_equal(array[0], PREPROCESS(image=read_grey(first))["image"])


def test_shards_are_removed_after_assembly(caches):
    """No shard or temporary file is left behind: only <key>.npy + <key>.json."""
    _, sharded, _, _ = caches
    for folder in ("features", "images"):
        names = cache_files(sharded / folder)
        assert not [name for name in names if ".shard-" in name or ".partial" in name]
        stems = {name.rsplit(".", 1)[0] for name in names}
        assert all(len(stem) == 64 and int(stem, 16) >= 0 for stem in stems)  # SHA-256 keys only


def test_world_size_one_writes_todays_files(caches, monkeypatch):
    """One process fills the whole array once (today's path): <key>.npy holds each view's full extraction."""
    single, _, _, _ = caches
    fills = []

    def fill(out: np.ndarray, rows: range) -> None:
        fills.append((out.shape, rows))
        out[:] = np.arange(out.size, dtype=out.dtype).reshape(out.shape)

    barrier_calls = []
    ranks = Ranks(0, 1, lambda: barrier_calls.append(1))
    array = load_or_build(
        single / "plain" / "k.npy", (2, 5, 3), np.float32, fill, {"split": "x"}, ranks, 1, 2
    )
    assert fills == [((2, 5, 3), range(5))] and barrier_calls == []
    np.testing.assert_array_equal(array, np.arange(30, dtype=np.float32).reshape(2, 5, 3))
    assert cache_files(single / "plain") == ["k.json", "k.npy"]
    meta = json.loads((single / "plain" / "k.json").read_text())
    assert set(meta) == {"split", "format", "shape", "created"} and meta["shape"] == [2, 5, 3]

    torch.manual_seed(0)
    net = ChestXrayNet("resnet10", None)
    config = FeatureCacheConfig(
        enabled=True, dir=str(single / "features"), precision="fp32", batch_size=BATCH
    )
    cache = FeatureCache(config, backbone_encoder(net, config.precision))  # same batches as the cache's
    records = json.loads((single.parent / "records.json").read_text())
    dataset = XrayDataset(pd.DataFrame(records), read_grey, EVAL)
    stored = np.load(single / "features" / f"{cache.key(dataset, SPLITS['val'])}.npy")
    np.testing.assert_array_equal(stored[0], cache.extract(_SeededView(dataset, EVAL, None, 0)))


def test_more_ranks_than_batches(tmp_path):
    """3 ranks over 2 blocks: one rank has no rows, the file is still whole and every rank reads it."""
    shape = (2, 5, 4)
    expected = np.arange(40, dtype=np.float32).reshape(shape)

    def fill(out: np.ndarray, rows: range) -> None:
        out[:] = expected[:, rows.start : rows.stop]

    meeting = threading.Barrier(3)
    results: dict[int, np.ndarray] = {}

    def rank(index: int) -> None:
        ranks = Ranks(index, 3, meeting.wait, tag="t")
        results[index] = load_or_build(
            tmp_path / "k.npy", shape, np.float32, fill, {}, ranks, axis=1, block=4
        )

    threads = [threading.Thread(target=rank, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [Ranks(r, 3).rows(5, 4) for r in range(3)] == [range(0, 0), range(0, 4), range(4, 5)]
    for index in range(3):
        np.testing.assert_array_equal(results[index], expected)
    assert cache_files(tmp_path) == ["k.json", "k.npy"]


def train_config(output_dir: Path, data_dir: Path, cache_dir: Path) -> DictConfig:
    """train.yaml's smoke experiment with a frozen backbone, 2 train views, fp32 features, an image cache."""
    cfg = compose_config(
        "train.yaml", ["experiment=smoke", *cache_overrides(cache_dir), "extras.print_config=false"]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = str(output_dir)
        cfg.paths.data_dir = str(data_dir)
        cfg.extras.enforce_tags = False
        cfg.trainer.enable_progress_bar = False
    return cfg


def cache_overrides(cache_dir: Path) -> list[str]:
    """Frozen backbone, feature cache (2 views, fp32) and image cache in `cache_dir`."""
    return [
        "model.unfreeze=[]",
        "data.feature_cache.enabled=true",
        "data.feature_cache.views=2",
        "data.feature_cache.precision=fp32",
        f"data.feature_cache.dir={cache_dir / 'features'}",
        "data.image_cache.enabled=true",
        f"data.image_cache.dir={cache_dir / 'images'}",
    ]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its inode and modification time: any rewrite changes them."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*.*")}


def test_extract_features_fills_the_cache_that_train_reuses(tmp_path, data_dir, monkeypatch):
    """extract_features.py on 2 DDP ranks writes every split's cache; train.py then writes none."""
    ddp = tmp_path / "ddp"
    result = run_entry_point(
        "extract_features.py",
        [
            "experiment=smoke",
            "trainer=ddp_sim",
            *cache_overrides(ddp),
            f"paths.data_dir={data_dir}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "extras.print_config=false",
            "trainer.enable_progress_bar=false",
        ],
        timeout=120,
    )
    assert_ok(result)
    reported = json.loads((tmp_path / "run" / "caches.json").read_text())
    assert set(reported) == {"images", "train features", "val features", "test features"}
    written = [*(ddp / "features").glob("*.npy"), *(ddp / "images").glob("*.npy")]
    assert sorted(reported.values()) == sorted(str(file) for file in written)
    for name, file in reported.items():
        assert f"{name}: key {Path(file).stem}, file {file}" in result.stdout + result.stderr

    from src.train import train

    def no_writes(*args: object, **kwargs: object) -> None:
        raise AssertionError("train.py wrote a cache file although extract_features.py had filled them")

    monkeypatch.setattr(disk_cache, "_write", no_writes)
    before = snapshot(ddp)
    cfg = train_config(tmp_path / "train", data_dir, ddp)
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.callbacks.rich_progress_bar = None
    HydraConfig().set_config(cfg)
    metrics, _ = train(cfg)
    GlobalHydra.instance().clear()
    assert "test/acc" in metrics
    assert snapshot(ddp) == before
