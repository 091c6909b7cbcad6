"""The proxy's data-parallel training (each Ray Train worker of a trial): held-out figures and
BatchNorm statistics over all workers equal those computed on all the images in one process."""

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Subset, TensorDataset

from condconv_nas import load_spec
from condconv_nas.data import parse_source
from condconv_nas.training.bn_stats import average_bn_stats
from condconv_nas.training.distributed import world
from condconv_nas.training.epoch import make_loader
from condconv_nas.training.evaluate import evaluate
from condconv_nas.training.proxy import proxy_top1
from condconv_nas.training.recipe import load_recipe


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


# MobileNetV2 and the proxy a search on digits runs (6 epochs, batch 64): about 0.89 from scratch.
SPEC = "mobilenet-v2"


def _score() -> float:
    recipe = load_recipe("proxy").for_data("digits")
    return proxy_top1(load_spec(SPEC), parse_source("digits"), recipe)["top1"]


def _proxy(rank: int, size: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=size)
    try:
        out.put((rank, _score()))
    finally:
        torch.distributed.destroy_process_group()


def test_two_workers_score_a_candidate_as_one_process_does():
    from test_scale import free_port

    ctx, port = mp.get_context("spawn"), free_port()
    out = ctx.Queue()
    procs = [ctx.Process(target=_proxy, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    (_, two), (_, also) = sorted(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    one = _score()
    assert two == also  # every worker reports the score over all of the held-out images
    # other data order and BatchNorm over half batches: not equal, but as close as two seeds
    assert one > 0.5 and abs(two - one) < 0.1, (one, two)
