"""How a data-parallel run deals out each global batch: every sample of the epoch's order goes to
exactly one process, in shares whose sizes the loop weighs the losses by, and a last batch too
small to share is left out (a different one each epoch). The processes themselves are exercised
through torchrun in tests/integration/test_distributed.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tas.core.distributed import DataParallel, GroupEnv, state_digest
from tas.core.loop import Trainer, epoch_order, samples_per_epoch


def shard(rank: int, world: int, order: torch.Tensor, batch: int) -> torch.Tensor:
    return DataParallel.shard(SimpleNamespace(rank=rank, world=world), order, batch)  # type: ignore[arg-type]


def share_sizes(rank: int, world: int, sizes: torch.Tensor) -> torch.Tensor:
    trainer = SimpleNamespace(parallel=SimpleNamespace(rank=rank, world=world))
    return Trainer._share(trainer, sizes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "batch", "world"), [(100, 20, 2), (103, 20, 2), (97, 12, 4)])
def test_every_sample_goes_to_one_process_in_strided_shares(n: int, batch: int, world: int) -> None:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    shards = [shard(r, world, order, batch) for r in range(world)]
    assert sorted(torch.cat(shards).tolist()) == sorted(order.tolist())
    steps = -(-n // batch)
    sizes = torch.full((steps,), float(batch))
    sizes[-1] = float(n - batch * (steps - 1))
    for r, s in enumerate(shards):
        per_step = share_sizes(r, world, sizes)
        assert int(per_step.sum()) == len(s)
        # step k of rank r holds the global batch's positions r, r+N, ... of step k
        local = batch // world
        for k in range(steps):
            got = s[k * local : k * local + int(per_step[k])]
            assert torch.equal(got, order[k * batch : (k + 1) * batch][r::world])


def test_a_last_batch_too_small_to_share_is_left_out() -> None:
    mlp, bn = nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert samples_per_epoch(mlp, 101, 20) == 101  # one process: a lone sample trains
    assert samples_per_epoch(bn, 101, 20) == 100  # ... unless BatchNorm cannot normalise it
    assert samples_per_epoch(mlp, 101, 20, processes=2) == 100  # a share of none
    assert samples_per_epoch(mlp, 102, 20, processes=2) == 102
    assert samples_per_epoch(bn, 103, 20, processes=2) == 100  # BatchNorm: two a process
    assert samples_per_epoch(bn, 104, 20, processes=2) == 104


def test_the_samples_left_out_differ_between_epochs() -> None:
    dev = torch.device("cpu")
    left_out = [set(range(101)) - set(epoch_order(5, e, 101, dev, 100).tolist()) for e in range(4)]
    assert all(len(s) == 1 for s in left_out)
    assert len({min(s) for s in left_out}) > 1


def test_group_env_is_read_from_torchrun_and_one_process_is_no_group() -> None:
    assert GroupEnv.read({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == GroupEnv(1, 2, 1)
    assert GroupEnv.read({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert GroupEnv.read({}) is None


def test_the_weights_digest_follows_every_byte_of_the_state() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    b = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    b.load_state_dict(a.state_dict())
    assert state_digest(a) == state_digest(b)
    with torch.no_grad():
        b[1].running_mean[0] += 1e-7  # a buffer, not a parameter
    assert state_digest(a) != state_digest(b)
