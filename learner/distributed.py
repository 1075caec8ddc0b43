"""Data-parallel training (DistributedDataParallel) across the GPUs of a machine, or across
processes on the CPU: N ranks, each a whole Trainer that samples its own batches, gradients
averaged in the backward pass. Outside a torchrun-style launch (no WORLD_SIZE in the
environment) every function here is a no-op and training runs exactly as in one process.

    results = launch(2, worker, args)        # N local ranks under torch's elastic agent (torchrun's)
    # in each rank:
    device = init(resolve_device(...))        # nccl on CUDA (one GPU per local rank), gloo on the CPU
    trainer = Trainer(cfg, device); ...resume...
    wrap(trainer)                             # synchronised batch norm, DDP, per-rank sampling seeds
    fit(trainer, feed, run_dir if is_main() else None, ...)   # rank 0 alone logs and checkpoints

What keeps the ranks in step (learner/train.py calls these, no-ops in one process):
  mean(values)         the step's loss and gradient norm averaged over the ranks before the host
                       reads them: every rank takes the same skip-or-update decision on a NaN
  agree(trainer, why)  after every step: the run clock (train_seconds, the cosine schedule's
                       clock and the minutes limit) is the slowest rank's, and a stop on one rank
                       (limit, stop request) stops all of them at the same step, so that no rank
                       waits in an all-reduce that the others have left

Batch norm: each rank normalises by the statistics of the whole global batch (torch's
SyncBatchNorm on CUDA; on the CPU, where torch's refuses to run, SyncBatchNorm2d below), so a
step on N ranks equals the single-process step on the concatenated batch (tests/test_ddp.py).
The loss stays each rank's mean over its labelled pixels, averaged over the ranks: equal to the
concatenated batch's mean when the ranks count as many labelled pixels, as DDP's mean losses
always are. learner.train.sync_batchnorm: false keeps per-rank statistics (fewer collectives;
the running statistics are rank 0's, broadcast before every step).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from common.errors import UserError
from common.log import log_event
from learner.device import available_cores

logger = logging.getLogger(__name__)

# A collective waits this long for the other ranks: rank 0 may spend minutes on a bootstrapping
# round or a checkpoint while the others wait at the next all-reduce.
TIMEOUT = timedelta(minutes=30)
_STOPS = ("", "steps", "minutes", "stop")  # agree(): the later in this list wins


def launched() -> bool:
    """This process is one rank of a torchrun-style launch (the environment names the world)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 outside a launch; from the environment before init())."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one that logs, checkpoints, bootstraps and exports."""
    return rank() == 0


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """Run fn(*args) in `nproc` local ranks under torch's elastic agent, as `torchrun --standalone
    --nproc-per-node N` would: a c10d rendezvous on a free localhost port, no restarts. Returns
    {rank: fn's return value}; a rank that fails stops the others and raises ChildFailedError."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    # the agent takes over these signals (to pass them to the ranks); give them back afterwards
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]
    handlers = [signal.getsignal(s) for s in signals]
    try:
        return elastic_launch(config, fn)(*args)
    finally:
        if threading.current_thread() is threading.main_thread():
            for s, h in zip(signals, handlers):
                signal.signal(s, h if h is not None else signal.SIG_DFL)


def init(device: torch.device) -> torch.device:
    """Join the process group of a launch (no-op outside one). On CUDA each local rank takes the
    GPU of its LOCAL_RANK and the backend is nccl; on the CPU gloo. Returns the rank's device."""
    if not launched() or dist.is_initialized():
        return device
    backend = "gloo"
    if device.type == "cuda":
        local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= gpus:
            raise UserError(
                f"local rank {local} has no GPU: this machine shows {gpus}; "
                f"start at most {gpus} ranks per machine (--nproc / --nproc-per-node)"
            )
        torch.cuda.set_device(local)
        backend = "nccl"
    dist.init_process_group(backend, timeout=TIMEOUT)
    log_event(
        logger,
        "ddp_init",
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        backend=backend,
        device=str(torch.device(device.type, torch.cuda.current_device()) if device.type == "cuda" else device),
    )
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(trainer: Any) -> Any:
    """Make a Trainer one rank of data-parallel training (no-op in one process): batch norm
    synchronised across ranks (learner.train.sync_batchnorm), the model wrapped in DDP (which
    starts every rank from rank 0's weights), and this rank's own sampling and crop streams.

    Seeds: rank 0 keeps the Trainer's streams (a fresh run: learner.train.seed; a resumed one:
    the checkpoint's), rank r > 0 draws from (seed, r, step). Call after the resume."""
    if not active():
        return trainer
    if trainer.heads:
        raise UserError(
            f"learner.heads {', '.join(trainer.heads)}: multi-task heads do not train on several "
            f"ranks yet (their extra forward passes bypass DDP); run them with one process"
        )
    sync = trainer.cfg.train.sync_batchnorm
    model = trainer.model
    if sync:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if trainer.cuda else convert_batchnorm(model)
        trainer.model = model  # the same parameter and buffer tensors: optimiser and checkpoints unchanged
    # broadcast_buffers (the default): rank 0's running statistics reach every rank before each
    # forward; needed without sync, and with it a guard against drift at the cost of one broadcast
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if trainer.cuda else None)
    trainer.net = torch.compile(ddp) if trainer.cfg.train.compile else ddp
    r = dist.get_rank()
    if r:
        seed = trainer.cfg.train.seed
        trainer.rng = np.random.default_rng([seed, r, trainer.step_count])
        trainer.gen.manual_seed(int(np.random.SeedSequence([seed, r, trainer.step_count]).generate_state(1)[0]))
    if not trainer.cuda and not trainer.cfg.train.threads:  # share the cores, one left to the streamer
        torch.set_num_threads(max(1, (available_cores() - 1) // dist.get_world_size()))
    log_event(
        logger,
        "ddp_wrap",
        rank=r,
        world=dist.get_world_size(),
        sync_batchnorm=sync,
        threads=torch.get_num_threads() if not trainer.cuda else None,
    )
    return trainer


@contextlib.contextmanager
def share_feed(feed: Any) -> Iterator[Any]:
    """The ranks of one machine sample one shared-memory ring buffer: rank 0 enters `feed` (an
    OfflineFeed whose streamer fills `feed.ring`; None on the other ranks) and sends the buffer's
    name; every other rank attaches to it and samples it on its own (RingFeed, uniform). Rank 0's
    bootstrapping rounds relabel that buffer, so every rank trains on the refined labels.
    In one process: `feed` itself."""
    if not active():
        with feed:
            yield feed
        return
    from learner.samples import RingFeed
    from streamer.shm.ringbuffer import RingBuffer

    if is_main():
        with feed:
            dist.broadcast_object_list([feed.ring.name, feed.buffer_cfg], src=0)
            yield feed
        return
    box: list[Any] = [None, None]
    dist.broadcast_object_list(box, src=0)
    ring = RingBuffer.attach(box[0], box[1])
    try:
        yield RingFeed(ring, mode="uniform")
    finally:
        ring.close()


def mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over the ranks of a tensor every rank holds (the tensor itself in one process)."""
    if not active():
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def agree(trainer: Any, reason: str | None) -> str | None:
    """After a step: every rank adopts the slowest rank's train_seconds and the strongest stop
    reason of any rank ("" / None: go on). In one process: `reason`, unchanged."""
    if not active():
        return reason
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(_STOPS.index(reason or "")), trainer.train_seconds], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    code, trainer.train_seconds = int(t[0].item()), float(t[1].item())
    return _STOPS[code] or None


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: every rank's output depends on every rank's input, so
    the gradient is summed over the ranks as well."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, on any device and
    backend (torch's SyncBatchNorm runs on GPUs only). One all-reduce of per-channel sums in the
    forward pass, one of their gradients in the backward pass (_AllReduceSum). The sums are taken
    around the running mean, the same on every rank, so that the variance E[(x - m)^2] -
    (E[x - m])^2 loses no precision to a large mean. Outside training, or in one process, it is
    BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and active()):
            return super().forward(x)
        c = x.shape[1]
        shift = self.running_mean.detach().clone().view(1, c, 1, 1)
        d = x.float() - shift
        local = torch.cat(
            [
                d.sum((0, 2, 3)),
                (d * d).sum((0, 2, 3)),
                torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device),
            ]
        )
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean_d = total[:c] / n
        var = (total[c : 2 * c] / n - mean_d * mean_d).clamp(min=0)  # biased, as batch norm normalises
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(shift.view(c) + mean_d, alpha=m)
            self.running_var.mul_(1 - m).add_(var * n / (n - 1).clamp(min=1), alpha=m)  # unbiased, as BatchNorm2d
        y = (d - mean_d.view(1, c, 1, 1)) * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Every nn.BatchNorm2d of `module` -> SyncBatchNorm2d holding the same parameter and buffer
    tensors (so an optimiser, a checkpoint's keys and references to the statistics stay valid)."""
    if type(module) is nn.BatchNorm2d:
        new = SyncBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module
