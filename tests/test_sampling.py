"""Train order and augmentation are functions of (seed, epoch, position): any worker count, any restart."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from data_helpers import folder_datamodule, make_class_folders
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DistributedSampler

from pneumonia_cam.data.sampling import EpochSampler, SampleKey


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_class_folders(tmp_path / "xray", counts=(24, 56))
    return tmp_path / "xray"


def indices(sampler: EpochSampler) -> list[int]:
    return [key.index for key in sampler]


def test_order_is_torch_randperm_of_seed_plus_epoch() -> None:
    """By hand: epoch e's order is randperm(n) under manual_seed(seed + e), as DistributedSampler draws it."""
    sampler = EpochSampler(10, seed=3)
    for epoch in (0, 1, 5):
        sampler.set_epoch(epoch)
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        assert indices(sampler) == expected
        assert [key.epoch for key in sampler] == [epoch] * 10
    sampler.set_epoch(0)
    assert indices(sampler) == list(DistributedSampler(range(10), num_replicas=1, rank=0, seed=3))
    torch.manual_seed(0)
    first = indices(sampler)
    torch.manual_seed(1)  # the process's random state plays no part
    assert indices(sampler) == first


def test_ranks_share_one_epoch_like_distributed_sampler() -> None:
    """Two ranks split one permutation (padded by repetition to equal shares) as DistributedSampler does."""
    shards = [EpochSampler(11, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    reference = [DistributedSampler(range(11), num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for epoch in (0, 2):
        for ours, theirs in zip(shards, reference, strict=True):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert indices(ours) == list(theirs) and len(ours) == 6
        assert sorted(set(indices(shards[0])) | set(indices(shards[1]))) == list(range(11))
    seeds = [{key.seed for key in shard} for shard in shards]
    assert not seeds[0] & seeds[1]  # ranks augment differently


def test_start_at_continues_the_same_keys() -> None:
    """A restarted sampler yields the uninterrupted epoch's tail, seeds included, then whole epochs again."""
    full = EpochSampler(20, seed=1)
    full.set_epoch(2)
    keys = list(full)
    resumed = EpochSampler(20, seed=1)
    resumed.start_at(epoch=2, position=8)
    assert list(resumed) == keys[8:]
    assert list(resumed) == keys  # the offset applies to one iteration only
    expected = np.random.SeedSequence([1, 2, 0]).generate_state(20)
    assert [key.seed for key in keys] == expected.tolist()
    with pytest.raises(ValueError, match="resume position 21 is outside this epoch's 20 samples"):
        resumed.start_at(epoch=0, position=21)


def test_weighted_draws_follow_torch_multinomial() -> None:
    weights = [1.0, 1.0, 8.0]
    sampler = EpochSampler(3, seed=4, weights=weights)
    sampler.set_epoch(1)
    generator = torch.Generator().manual_seed(5)
    expected = torch.multinomial(torch.tensor(weights, dtype=torch.float64), 3, True, generator=generator)
    assert indices(sampler) == expected.tolist()


def test_augmented_batches_do_not_depend_on_worker_count(folder: Path) -> None:
    """With augmentation on, 0 and 2 workers give bitwise the same train batches, epoch after epoch."""
    single = folder_datamodule(folder, batch_size=8)
    workers = folder_datamodule(folder, batch_size=8, num_workers=2)
    for dm in (single, workers):
        dm.setup("fit")
    loaders = [dm.train_dataloader() for dm in (single, workers)]
    for epoch in (0, 1):
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        batches = [list(loader) for loader in loaders]
        for (a, la), (b, lb) in zip(*batches, strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(batches[0][0][0], _first_batch(single, epoch=0))  # and epochs differ


def _first_batch(dm, epoch: int) -> torch.Tensor:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return next(iter(loader))[0]


def test_a_keyed_batch_is_augmented_from_its_first_key(folder: Path) -> None:
    """The dataset reseeds once per batch: the same keys give the same pixels; another seed, other pixels."""
    dm = folder_datamodule(folder)
    dm.setup("fit")
    dataset = dm.data_train
    keys = [SampleKey(i, 0, 11) for i in range(6)]
    first = torch.stack([image for image, _ in dataset.__getitems__(keys)])
    dataset.reseed(999)  # whatever the stream did before
    assert torch.equal(first, torch.stack([image for image, _ in dataset.__getitems__(keys)]))
    other = [SampleKey(i, 0, 12) for i in range(6)]
    assert not torch.equal(first, torch.stack([image for image, _ in dataset.__getitems__(other)]))
    assert torch.equal(dataset[keys[0]][0], first[0])


def fitting(ready: int, batches: int, epoch: int) -> SimpleNamespace:
    """The few Trainer fields the data module's state_dict reads, mid-fit."""
    progress = SimpleNamespace(current=SimpleNamespace(ready=ready))
    return SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        num_training_batches=batches,
        current_epoch=epoch,
        world_size=1,
        global_rank=0,
    )


@pytest.mark.parametrize(("ready", "resume"), [(3, (2, 24)), (7, (3, 0))])
def test_datamodule_state_puts_the_next_loader_where_training_stopped(folder, ready, resume):
    """Mid-epoch (3 of 7 batches of 8 done): the next loader starts at sample 24 of that epoch; at the end of
    the epoch it starts the next one from 0."""
    dm = folder_datamodule(folder, batch_size=8)
    dm.setup("fit")
    dm.trainer = fitting(ready, batches=7, epoch=2)
    state = dm.state_dict()
    assert state == {"epoch": 2, "position": 8 * ready, "epoch_done": ready == 7}
    torch.save(state, folder.parent / "state.pt")
    restored = folder_datamodule(folder, batch_size=8)
    restored.setup("fit")
    restored.load_state_dict(torch.load(folder.parent / "state.pt", weights_only=True))
    sampler = restored.train_dataloader().sampler
    reference = EpochSampler(len(dm.data_train), seed=7)
    reference.set_epoch(resume[0])
    assert list(sampler) == list(reference)[resume[1] :]
    assert sampler.epoch == resume[0]
