"""The proxy's data-parallel training (each Ray Train worker of a trial): held-out figures and
BatchNorm statistics over all workers equal those computed on all the images in one process."""

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Subset, TensorDataset

from condconv_nas.training.engine import average_bn_stats, evaluate, make_loader, world


def _images(n=37, classes=5):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)
    )


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 5),
    )  # fmt: skip


def _worker(rank: int, size: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=size)
    try:
        assert world() == (size, rank)
        ds, model = _images(), _model()
        # as _train_once shards the held-out images: every size-th image from the rank's own
        shard = Subset(ds, range(rank, len(ds), size))
        scored = evaluate(model, make_loader(shard, 4, train=False, seed=0), shared=True)
        bn = model[1]
        bn.running_mean.fill_(float(rank))  # each worker's own estimate
        bn.running_var.fill_(float(2 * rank + 1))
        average_bn_stats(model)
        out.put((rank, scored, bn.running_mean.tolist(), bn.running_var.tolist()))
    finally:
        torch.distributed.destroy_process_group()


def test_held_out_figures_and_bn_statistics_are_over_all_workers():
    from test_scale import free_port

    size, ctx = 3, mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, size, port, out)) for r in range(size)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # the reference: one process scoring every image (37 of them: the shards are 13, 12, 12)
    whole = evaluate(_model(), make_loader(_images(), 4, train=False, seed=0))
    assert world() == (1, 0)
    for _, scored, mean, var in got:
        # counts are exact; the loss is a float32 sum over other batches
        assert scored["top1"] == whole["top1"] and scored["top5"] == whole["top5"]
        assert scored["loss"] == pytest.approx(whole["loss"], rel=1e-6)
        assert mean == [1.0] * 4  # (0 + 1 + 2) / 3
        assert var == [3.0] * 4  # (1 + 3 + 5) / 3
