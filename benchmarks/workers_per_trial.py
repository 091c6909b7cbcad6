"""Does a candidate's proxy score depend on how many workers train it?

With ``search --backend ray --workers-per-trial N`` each trained trial is one data-parallel
training: the recipe's batch is the global one, split over the N workers, each reading its shard
of the training images, with the held-out score and the BatchNorm statistics taken over all of
them. This trains each spec with each seed once in one process and once on two processes (gloo,
the code Ray Train's workers run, here started by torch.multiprocessing so that Ray's own start-up
is not timed) and prints top-1 side by side, with the seed-to-seed spread to compare against.
Resumable: ``--out FILE`` keeps every finished training, and a rerun trains only what it lacks.
Run: ``python benchmarks/workers_per_trial.py [--data digits] [--specs efficientnet-b0,...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from condconv_nas import load_spec
from condconv_nas.data import parse_source
from condconv_nas.files import write_atomic
from condconv_nas.training.proxy import proxy_top1
from condconv_nas.training.recipe import load_recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, job: dict, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(job["threads"])
    torch.distributed.init_process_group("gloo", rank=rank, world_size=size)
    try:
        metrics = _train(job)
        if rank == 0:
            out.put(metrics)
    finally:
        torch.distributed.destroy_process_group()


def _train(job: dict) -> dict:
    source = parse_source(job["data"])
    recipe = load_recipe(job["trainer"]).for_data(source.kind)
    return proxy_top1(load_spec(job["spec"]), source, recipe, seed=job["seed"])


def train(job: dict, workers: int) -> tuple[float, float]:
    """(top-1, seconds) of one proxy training on ``workers`` processes."""
    t0 = time.time()
    if workers == 1:
        torch.set_num_threads(job["threads"] * 2)  # the same two cores as two workers
        top1 = _train(job)["top1"]
    else:
        ctx, port = mp.get_context("spawn"), _free_port()
        out = ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(r, workers, port, job, out)) for r in range(workers)
        ]
        for p in procs:
            p.start()
        top1 = out.get()["top1"]
        for p in procs:
            p.join()
    return top1, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--trainer", default="proxy")
    ap.add_argument("--specs", default="efficientnet-b0,condconv-efficientnet-b0")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", default="runs/workers-per-trial.json")
    args = ap.parse_args()
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.is_file() else {}
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.data}, recipe {args.trainer}: top-1 on 1 process and on 2 (global batch kept)")
    print(f"{'spec':28} seed  1 worker   2 workers  diff    seconds (1/2)")
    diffs, spread = [], []
    for name in args.specs.split(","):
        tops = {1: [], 2: []}
        for seed in seeds:
            job = {"spec": name, "data": args.data, "trainer": args.trainer, "seed": seed}
            job["threads"] = 1  # per worker; one process gets two
            row = []
            for workers in (1, 2):
                key = f"{args.data}/{args.trainer}/{name}/{seed}/{workers}"
                if key not in done:
                    done[key] = train(job, workers)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(out, json.dumps(done, indent=1) + "\n")  # a kill loses no row
                row.append(done[key])
                tops[workers].append(done[key][0])
            (a, ta), (b, tb) = row
            diffs.append(b - a)
            print(f"{name:28} {seed:4d}  {a:.4f}    {b:.4f}    {b - a:+.4f}  {ta:.0f}/{tb:.0f}")
        spread += [max(t) - min(t) for t in tops.values() if len(t) > 1]
    print(f"mean |2 workers - 1 worker|: {statistics.mean(abs(d) for d in diffs):.4f}")
    if spread:
        print(f"mean seed-to-seed spread (same workers): {statistics.mean(spread):.4f}")


if __name__ == "__main__":
    main()
