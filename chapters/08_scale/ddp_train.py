"""Train an MLP on the digits with DistributedDataParallel: one script, any number of processes.

One machine, two CPU processes (gloo), as in the chapter:

    torchrun --nnodes=1 --nproc-per-node=2 ddp_train.py --batch-size 32 --steps 100 --out run.json

Two GPU nodes with 8 GPUs each (NCCL, chosen automatically when CUDA is there); run on every node:

    torchrun --nnodes=2 --nproc-per-node=8 --node-rank=$NODE_RANK \\
        --rdzv-backend=c10d --rdzv-endpoint=$HEAD_NODE:29500 --rdzv-id=digits1 ddp_train.py ...

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process; the
script only reads them through ``dist.init_process_group``. Each process reads its own shard of
every global batch (DistributedSampler), so ``--batch-size`` is per process and the global batch is
``batch_size * world_size``. Rank 0 writes a JSON summary (losses, throughput, accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from dlbook.data import load_digits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32, help="samples per process per step")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--hidden", type=int, default=256, help="hidden units of the MLP")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto",
                   help="auto: nccl when CUDA is available, else gloo")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per process (0: leave as is)")
    p.add_argument("--data", default="", help="a torch.save'd dict X_train, y_train, X_test, y_test "
                   "(default: dlbook.data.load_digits())")
    p.add_argument("--out", default="", help="JSON summary written by rank 0")
    p.add_argument("--save-params", default="", help="state_dict written by rank 0 at the end")
    return p.parse_args(argv)


def load_data(path: str) -> dict[str, torch.Tensor]:
    """Return the digits split as tensors, from ``path`` if given (saves importing scikit-learn)."""
    if path:
        return torch.load(path)
    split = load_digits()
    return {k: torch.as_tensor(getattr(split, k)) for k in ("X_train", "y_train", "X_test", "y_test")}


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    use_cuda = torch.cuda.is_available() and args.backend != "gloo"
    backend = args.backend if args.backend != "auto" else ("nccl" if use_cuda else "gloo")
    dist.init_process_group(backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if args.threads:
        torch.set_num_threads(args.threads)

    split = load_data(args.data)
    train_set = TensorDataset(split["X_train"], split["y_train"])
    # Rank r reads indices r, r + W, r + 2W, ... of one shared seeded permutation: the W shards of a
    # step together are exactly the global batch one process would read with batch_size * W.
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    if len(loader) == 0:
        raise SystemExit(f"--batch-size {args.batch_size} x {world_size} processes is larger than the data")

    torch.manual_seed(args.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = make_model(args.hidden).to(device)
    ddp_model = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=args.lr, momentum=args.momentum)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    losses: list[float] = []
    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.steps:
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
            with autocast:
                loss = F.cross_entropy(ddp_model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # DDP all-reduces (averages) the gradients here
            scaler.step(optimizer)
            scaler.update()
            global_loss = loss.detach().float().clone()
            dist.all_reduce(global_loss)  # for the log only: the mean loss over the global batch
            losses.append(global_loss.item() / world_size)
            step += 1
            if step == 1:  # time from the end of the first step: start-up and warm-up excluded
                start = time.perf_counter()
            if step == args.steps:
                break
        epoch += 1
    if use_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    timed_steps = max(args.steps - 1, 1)

    if rank == 0:
        model.eval()
        with torch.no_grad():
            X_test = split["X_test"].to(device)
            accuracy = (model(X_test).argmax(1).cpu() == split["y_test"]).float().mean().item()
        summary = {
            "world_size": world_size, "backend": backend, "device": str(device),
            "threads": torch.get_num_threads(), "batch_size": args.batch_size,
            "global_batch": args.batch_size * world_size, "steps": args.steps, "seconds": seconds,
            "samples_per_second": timed_steps * args.batch_size * world_size / seconds,
            "losses": losses, "test_accuracy": accuracy,
        }
        print(f"world_size={world_size} backend={backend} global_batch={summary['global_batch']} "
              f"steps={args.steps} samples/s={summary['samples_per_second']:.0f} "
              f"final_loss={losses[-1]:.4f} test_accuracy={accuracy:.4f}", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(summary, f)
        if args.save_params:
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, args.save_params)
    # Leave together: a rank that tears gloo down while its peer is still evaluating can abort in
    # gloo's destructor ("terminate called without an active exception", SIGABRT).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Everything is written and the group is destroyed. Leave without running the interpreter's
    # shutdown: under load, a gloo thread still being torn down at exit can abort the process
    # ("terminate called without an active exception", SIGABRT) after a perfectly good run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
