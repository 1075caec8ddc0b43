"""Training: the training step and the loop around it. Read it top to bottom.

    trainer = Trainer(cfg.learner)            # model, AdamW, RNGs, counters: what a checkpoint holds
    trainer.step(batch)                       # one step on a Batch of ring-buffer samples
    fit(trainer, feed, run_dir, Limits(steps=2000, minutes=12))   # the loop: logs, checkpoints, limits

One training step = Trainer.forward_backward + Trainer.update:
  1. crops     N buffer samples -> N x per_frame jittered crops with their trimaps, on the device
               (learner/crops.py)
  2. forward   normalise; channels_last and bf16 autocast on CUDA and on CPUs with native bf16
               (learner.train.cpu_precision), else float32
  3. loss      binary cross-entropy on the trimap's positive and negative pixels only (learner/loss.py);
               with extra heads enabled (learner.heads), their losses too, on the same backbone
               step: segments against the flow cropped like the image (learner/grouping_loss.py),
               embeddings of tracked-patch pairs (learner/embedding_loss.py); the weighted sum
  4. backward  and clip the global gradient norm
  5. update    one host sync reads the loss and the gradient norm. Not finite: the step is skipped
               (no AdamW update, batch-norm statistics restored), counted, and `max_nan_steps` in a
               row stop the run with an error. Finite: set this step's learning rate, AdamW step.

The loop overlaps the CPU and the GPU: while the GPU runs step k (CUDA calls return at once), the
CPU copies the samples of step k+1 out of the buffer into the other of two pinned host batches.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from learner import distributed
from learner.checkpoint import FORMAT, VERSION, CheckpointWriteError, check_compatible, save_checkpoint
from learner.config import LearnerConfig
from learner.crops import crop_flow, make_crops
from learner.embedding_loss import triplet_loss
from learner.grouping_loss import segments_loss
from learner.heads import HeadInputs, forward_heads
from learner.loss import masked_bce
from learner.model import architecture, build_model, output_size
from learner.samples import Feed, next_batch
from common.errors import UserError
from common.log import log_event
from streamer.shm.ringbuffer import Batch
from streamer.writer import append_line

logger = logging.getLogger(__name__)

TRAIN_LOG = "train.jsonl"
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)  # their statistics, restored after a skipped step


class NonFiniteLoss(UserError):
    """The loss stayed NaN/inf for max_nan_steps steps in a row."""


def resolve_device(requested: str = "auto", strict: bool = False) -> torch.device:
    """auto: CUDA when there is one. cuda without CUDA: the CPU and one warning, or, when strict,
    a UserError."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        if strict:
            raise UserError(f"learner.train.device is cuda but CUDA is not available ({why}); "
                            f"use --device cpu, or set learner.train.strict_device: false to fall back")
        log_event(logger, "device_fallback", logging.WARNING, requested="cuda", using="cpu", reason=why)
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """The CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there autocast to bf16 makes a
    training step about 1.8x faster (bench/learner.py). Without those instructions oneDNN
    emulates bf16, which is slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def use_bf16(device: torch.device, cpu_precision: str) -> bool:
    """bf16 autocast for training: always on CUDA; on the CPU per learner.train.cpu_precision."""
    if device.type == "cuda":
        return True
    return cpu_precision == "bf16" or (cpu_precision == "auto" and cpu_has_native_bf16())


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_threads(requested: int = 0) -> int:
    """torch's CPU threads: `requested`, or all usable cores but one. On a small machine that one
    is worth more to the streamer than to torch: an intra-op pool that must wait for a busy core
    runs several times slower than one thread fewer (measured: 2 threads next to a busy core,
    18 crops/s; 1 thread, 67)."""
    return requested or max(1, available_cores() - 1)


@dataclass
class StepResult:
    loss: float  # NaN when the step was skipped
    lr: float
    grad_norm: float
    crops: int
    skipped: bool
    losses: dict[str, float] = field(default_factory=dict)  # per head, with extra heads enabled


@dataclass
class _Pending:
    """A step whose forward and backward are queued on the device, not yet applied."""
    loss: torch.Tensor
    grad_norm: torch.Tensor
    crops: int
    gen_state: torch.Tensor  # crop RNG before the step (to undo it)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # per head, with extra heads enabled


class Trainer:
    """The model, its optimiser, the random generators and the counters of one training run."""

    def __init__(self, cfg: LearnerConfig, device: torch.device | str | None = None):
        t = cfg.train
        self.cfg = cfg
        self.device = device if isinstance(device, torch.device) else resolve_device(device or t.device, t.strict_device)
        self.cuda = self.device.type == "cuda"
        if not self.cuda:
            torch.set_num_threads(cpu_threads(t.threads))
        random.seed(t.seed)
        torch.manual_seed(t.seed)  # the weight initialisation
        self.crop_size = cfg.crop_size
        self.heads = cfg.heads.extra()  # [] (the default): the plain mask net, trained exactly as ever
        self.model = build_model(cfg.model, self.crop_size, cfg.heads).to(self.device)
        self.arch = architecture(cfg.model, self.crop_size, cfg.heads)
        self.target_size = output_size(self.model, self.crop_size)
        self.bf16 = use_bf16(self.device, t.cpu_precision)
        # channels_last: what tensor cores and oneDNN's bf16 kernels like (CPU float32: left alone)
        self.channels_last = t.channels_last and self.bf16
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = torch.compile(self.model) if t.compile else self.model
        self.net_heads = torch.compile(forward_heads) if (t.compile and self.heads) else forward_heads
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.ndim > 1]  # no weight decay on biases and batch norm
        no_decay = [p for p in self.params if p.ndim <= 1]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=t.lr, betas=(0.9, 0.99), fused=True if self.cuda else None)
        self._bn = [b for m in self.model.modules() if isinstance(m, BATCH_NORMS)
                    for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        self._bn_backup = [b.clone() for b in self._bn]
        self.rng = np.random.default_rng(t.seed)  # which buffer samples each step draws
        self.gen = torch.Generator(self.device)  # crop boxes, flips and colours
        self.gen.manual_seed(t.seed)
        self.step_count = 0  # AdamW updates done (skipped steps do not count)
        self.nan_skipped = 0
        self.nan_streak = 0
        self.crops_seen = 0
        self.train_seconds = 0.0  # of the whole run, resumes included
        self.progress: float | None = None  # 0..1 of the run's budget (cosine lr); None: constant
        self.slot_size: tuple[int, int] | None = None  # (h, w) of the buffer slots trained on
        self._pending: _Pending | None = None
        self._pairs_missing: str | None = None  # why the embedding head got no pairs (logged once)

    @property
    def precision(self) -> str:
        """bf16 or fp32: how the forward and backward run (for logs and benchmarks)."""
        return "bf16" if self.bf16 else "fp32"

    # ---- the training step ------------------------------------------------------------------
    def lr_now(self) -> float:
        t = self.cfg.train
        warm = min(1.0, (self.step_count + 1) / t.warmup_steps) if t.warmup_steps else 1.0
        if t.schedule == "constant" or self.progress is None:
            return t.lr * warm
        p = min(max(self.progress, 0.0), 1.0)
        return t.lr * warm * (t.min_lr_fraction + (1 - t.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * p)))

    def upload(self, batch: Batch, pinned: dict[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames, trimaps and valid boxes of a Batch on the device. From pinned host tensors
        (HostBatches) the copies are asynchronous."""
        n = len(batch)
        if pinned is not None:
            frames, trimaps = pinned["frames"][:n], pinned["trimaps"][:n]
        else:
            frames, trimaps = torch.from_numpy(batch.frames), torch.from_numpy(batch.trimaps)
        valid = torch.from_numpy(np.ascontiguousarray(batch.valid, dtype=np.int64))
        nb = self.cuda and pinned is not None
        return (frames.to(self.device, non_blocking=nb), trimaps.to(self.device, non_blocking=nb),
                valid.to(self.device))

    def forward_backward(self, frames: torch.Tensor, trimaps: torch.Tensor, valid: torch.Tensor,
                         extra: HeadInputs | None = None) -> _Pending:
        """Steps 1-4. On CUDA this only queues work: nothing waits for the GPU here.
        extra: what the extra heads' losses need (upload_heads); ignored without extra heads."""
        self.model.train()
        torch._foreach_copy_(self._bn_backup, self._bn)  # batch-norm statistics, to undo a skipped step
        gen_state = self.gen.get_state()
        crops = make_crops(frames, trimaps, valid, self.cfg.crops, self.crop_size, self.target_size, self.gen)
        x = self.model.normalize(crops.images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.heads:  # one backbone pass for the mask and the segments
                outputs = self.net_heads(self.model, x, [n for n in ("mask", "segments") if n in self.model.heads])
                logits = outputs["mask"]
            else:
                logits = self.net(x)
        loss = masked_bce(logits, crops.targets)  # float32 even under autocast
        losses: dict[str, torch.Tensor] = {}
        if self.heads:
            losses = self.head_losses(loss, outputs, crops, valid, extra or HeadInputs())
            w = self.cfg.heads
            loss = sum(getattr(w, name).weight * value for name, value in losses.items())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip or math.inf)
        crops_all_ranks = int(crops.images.shape[0]) * distributed.world_size()
        self._pending = _Pending(loss.detach(), norm.detach(), crops_all_ranks, gen_state,
                                 {k: v.detach() for k, v in losses.items()})
        return self._pending

    def head_losses(self, mask_loss: torch.Tensor, outputs: dict[str, torch.Tensor], crops, valid: torch.Tensor,
                    extra: HeadInputs) -> dict[str, torch.Tensor]:
        """Step 3 for the extra heads: each enabled head's loss (float32), unweighted. A head with
        nothing to learn from in this batch (no sample with flow; no pairs from two groups: see
        upload_heads and draw_pairs, decided on the host) is left out of the sum."""
        h = self.cfg.heads
        losses = {"mask": mask_loss}
        if "segments" in outputs and extra.flows is not None:
            flow, ok = crop_flow(extra.flows, extra.has_flow, valid, crops.boxes, crops.source, self.target_size)
            pasted = getattr(crops, "pasted", None)  # copy-paste: the flow there is the background's
            if pasted is not None:
                ok = ok & ~(F.interpolate(pasted.unsqueeze(1).float(), size=ok.shape[-2:], mode="nearest")[:, 0] > 0)
            losses["segments"] = segments_loss(outputs["segments"], flow, ok, h.segments)
        if "embedding" in self.heads and extra.query is not None:
            patches = torch.cat([extra.query, extra.tracked]).permute(0, 3, 1, 2).float()
            side = getattr(self.model, "input_size", None) or h.embedding.patch
            if patches.shape[-1] != side or patches.shape[-2] != side:
                patches = F.interpolate(patches, size=(side, side), mode="bilinear", align_corners=False)
            x = self.model.normalize(patches)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                emb = self.net_heads(self.model, x, ["embedding"])["embedding"]
            n = extra.query.shape[0]
            hard = h.embedding.hard_negatives if self.step_count >= h.embedding.warmup_steps else None
            losses["embedding"] = triplet_loss(emb[:n], emb[n:], extra.group, h.embedding.margin, hard)
        return losses

    def update(self, pending: _Pending) -> StepResult:
        """Step 5: the one host sync of the step, then the AdamW update or a skipped step."""
        self._pending = None
        values = torch.stack([pending.loss, pending.grad_norm.float(), *pending.losses.values()])
        loss, norm, *head_values = distributed.mean(values).tolist()  # several ranks: one decision for all
        head_losses = dict(zip(pending.losses, head_values))
        lr = self.lr_now()
        if not (math.isfinite(loss) and math.isfinite(norm)):
            torch._foreach_copy_(self._bn, self._bn_backup)
            self.opt.zero_grad(set_to_none=True)
            self.nan_skipped += 1
            self.nan_streak += 1
            log_event(logger, "nan_step_skipped", logging.WARNING, step=self.step_count, loss=loss,
                      grad_norm=norm, in_a_row=self.nan_streak, total=self.nan_skipped)
            if self.nan_streak >= self.cfg.train.max_nan_steps:
                raise NonFiniteLoss(
                    f"training stopped: the loss was not finite for {self.nan_streak} steps in a row "
                    f"(learner.train.max_nan_steps) after step {self.step_count}; lower learner.train.lr "
                    f"or check the input frames")
            return StepResult(math.nan, lr, norm, pending.crops, True)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.step_count += 1
        self.nan_streak = 0
        self.crops_seen += pending.crops
        return StepResult(loss, lr, norm, pending.crops, False, head_losses)

    def abandon_step(self) -> None:
        """Forget a queued step (interrupted before update): statistics and crop RNG as before it."""
        if self._pending is not None:
            torch._foreach_copy_(self._bn, self._bn_backup)
            self.gen.set_state(self._pending.gen_state)
            self.opt.zero_grad(set_to_none=True)
            self._pending = None

    def step(self, batch: Batch, pairs=None) -> StepResult:
        """One whole training step on a batch of buffer samples (fit() overlaps the two halves);
        pairs: a PairBatch of tracked patches for the embedding head (learner/pairs.py)."""
        extra = self.upload_heads(batch, pairs) if self.heads else None
        return self.update(self.forward_backward(*self.upload(batch), extra))

    # ---- the extra heads' inputs ----------------------------------------------------------------
    def draw_pairs(self, pair_feed):
        """Tracked-patch pairs for this step from a PairFeed (learner/pairs.py), or None: no
        embedding head, no feed, or too few pairs yet (one log line when that starts and one when
        pairs arrive; the embedding loss is skipped meanwhile)."""
        if "embedding" not in self.heads:
            return None
        want = self.cfg.heads.embedding.pairs
        pairs = pair_feed.sample_pairs(want, self.rng) if pair_feed is not None else None
        got = 0 if pairs is None else len(pairs.group)
        groups = 0 if pairs is None else len(np.unique(pairs.group))
        if groups < 2:  # a pair needs a negative from another (camera, shot)
            why = ("no pair feed" if pair_feed is None else
                   f"{got} pair(s) from {groups} shot(s) in the store; negatives need two "
                   f"(streamer.patches.enabled mines pairs from moving objects)")
            if self._pairs_missing is None:
                log_event(logger, "embedding_no_pairs", logging.WARNING, step=self.step_count, reason=why,
                          effect="embedding loss skipped until pairs arrive")
            self._pairs_missing = why
            return None
        if self._pairs_missing is not None:
            log_event(logger, "embedding_pairs_ready", step=self.step_count, pairs=got)
            self._pairs_missing = None
        return pairs

    def upload_heads(self, batch: Batch, pairs=None) -> HeadInputs:
        """The flow of the batch (for the segments head) and the pairs (embedding) on the device."""
        dev = self.device
        out = HeadInputs()
        if "segments" in self.heads and batch.has_flow.any():  # the first frames of shots have none
            out.flows = torch.from_numpy(batch.flows).to(dev)
            out.has_flow = torch.from_numpy(np.ascontiguousarray(batch.has_flow)).to(dev)
        if pairs is not None:
            out.query = torch.from_numpy(np.ascontiguousarray(pairs.query)).to(dev)
            out.tracked = torch.from_numpy(np.ascontiguousarray(pairs.tracked)).to(dev)
            out.group = torch.from_numpy(np.asarray(pairs.group, dtype=np.int64)).to(dev)
        return out

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self, numpy_rng_state: dict | None = None) -> dict:
        """Everything needed to continue exactly; numpy_rng_state: the sampling RNG as it must be
        when training resumes (fit passes the state before its prefetched batch was drawn)."""
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "format": FORMAT, "version": VERSION, "step": self.step_count,
            "arch": self.arch, "config": dataclasses.asdict(self.cfg),
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "rng": {"python": random.getstate(), "numpy": numpy_rng_state or self.rng.bit_generator.state,
                    "torch": torch.get_rng_state(), "cuda": cuda_rng, "crops": self.gen.get_state(),
                    "crops_device": self.device.type},
            "counters": {"nan_skipped": self.nan_skipped, "crops_seen": self.crops_seen,
                         "train_seconds": self.train_seconds},
            "slot_size": list(self.slot_size) if self.slot_size else None,
            "saved_at": time.time(), "torch_version": str(torch.__version__),
        }

    def load_state_dict(self, state: dict, path: str | Path = "checkpoint") -> None:
        """Restore a checkpoint of the same architecture (else a UserError naming the difference)."""
        check_compatible(state, self.arch, path)
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: checkpoint does not fit the model ({first})") from None
        for group in self.opt.param_groups:  # the configured values win over the saved ones
            group["weight_decay"] = self.cfg.train.weight_decay if group["weight_decay"] else 0.0
        rng = state["rng"]
        random.setstate(rng["python"])
        self.rng.bit_generator.state = rng["numpy"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if rng.get("crops_device") == self.device.type:
            self.gen.set_state(rng["crops"])
        else:  # CPU and CUDA generators keep different states: continue with a fresh stream
            self.gen.manual_seed(self.cfg.train.seed + int(state["step"]))
            log_event(logger, "crop_rng_reseeded", saved_on=rng.get("crops_device"), now_on=self.device.type)
        c = state["counters"]
        self.step_count = int(state["step"])
        self.nan_skipped, self.crops_seen = int(c["nan_skipped"]), int(c["crops_seen"])
        self.train_seconds = float(c["train_seconds"])
        self.slot_size = tuple(state["slot_size"]) if state.get("slot_size") else self.slot_size


# ---- the loop -------------------------------------------------------------------------------

class HostBatches:
    """Two host batches used in turn: one is copied to the device while the other is filled.
    Pinned (page-locked) on CUDA, so that the copies run asynchronously."""

    def __init__(self, capacity: int, height: int, width: int, pin: bool):
        self._tensors, self._batches, self._i = [], [], 0
        for _ in range(2):
            t = {"frames": torch.empty((capacity, height, width, 3), dtype=torch.uint8, pin_memory=pin),
                 "trimaps": torch.empty((capacity, height, width), dtype=torch.uint8, pin_memory=pin)}
            self._tensors.append(t)
            self._batches.append(Batch(capacity, height, width, storage={k: v.numpy() for k, v in t.items()}))

    def next(self) -> Batch:
        self._i ^= 1
        return self._batches[self._i]

    def pinned(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self._tensors[self._batches.index(batch)]


@dataclass
class Limits:
    steps: int = 0  # total steps of the run (a resumed run counts the steps it had); 0 = none
    minutes: float = 0.0  # total training time of the run, resumes included; 0 = none


@dataclass
class Summary:
    step: int  # the run's step count at the end
    steps: int  # steps done by this call
    crops: int  # crops trained on by this call
    seconds: float  # wall time of this call's loop
    first_loss: float  # mean loss of this call's first logged interval
    last_loss: float  # ... and of its last
    nan_skipped: int  # by this call
    stopped: str  # steps | minutes | stop | interrupted
    checkpoint: Path | None  # the last checkpoint written
    interrupted_by: str = ""  # class name of the interrupt that stopped the loop
    last_losses: dict[str, float] = field(default_factory=dict)  # extra heads: each head's loss, last interval

    @property
    def crops_per_s(self) -> float:
        return self.crops / self.seconds if self.seconds > 0 else 0.0


def budget_used(trainer: Trainer, limits: Limits) -> float | None:
    """Fraction of the run's budget spent (the cosine schedule's clock); None without a budget."""
    parts = []
    if limits.steps:
        parts.append(trainer.step_count / limits.steps)
    if limits.minutes:
        parts.append(trainer.train_seconds / (limits.minutes * 60))
    return max(parts) if parts else None


def fit(trainer: Trainer, feed: Feed, run_dir: str | Path | None, limits: Limits, progress: bool = True,
        stop: Callable[[], bool] | None = None, status: Callable[[], str] | None = None,
        interrupts: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
        on_step: Callable[[Trainer, StepResult], bool] | None = None, pairs=None) -> Summary:
    """Train on samples from `feed` until a limit is reached or `stop()` turns true. Writes
    RUN/train.jsonl and checkpoints (on the configured schedule and at the end, also after an
    interrupt or an error); run_dir None: neither. `status()` adds text to the progress bar.
    `on_step(trainer, result)` runs after every applied step (bootstrapping rounds, reports; its
    time counts as training time); returning True asks for a checkpoint of this step.
    An exception of a type in `interrupts` ends the loop like a limit (stopped="interrupted");
    any other propagates, after the final checkpoint.
    pairs: a PairFeed (learner/pairs.py) for the embedding head; default: the feed itself when it
    has sample_pairs (RingFeed, OfflineFeed). Without pairs the embedding loss is skipped (one log line)."""
    cfg = trainer.cfg
    run_dir = Path(run_dir) if run_dir is not None else None
    n = max(1, math.ceil(cfg.train.batch / cfg.crops.per_frame))  # buffer samples per step
    host = HostBatches(n, feed.height, feed.width, pin=trainer.cuda)
    trainer.slot_size = (feed.height, feed.width)
    log_fd = None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(run_dir / TRAIN_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start_step, start_seen, start_nan = trainer.step_count, trainer.crops_seen, trainer.nan_skipped
    t_start = last_ckpt_t = last_log_t = time.monotonic()
    last_ckpt_step = trainer.step_count
    interval_losses: list[float] = []
    interval_heads: dict[str, list[float]] = {}  # extra heads: each head's losses of the interval
    last_heads: dict[str, float] = {}
    interval_crops = 0
    first_loss = last_loss = math.nan
    ema = None
    checkpoint: Path | None = None
    stopped, interrupted_by = "stop", ""
    rng_state = trainer.rng.bit_generator.state  # the sampling RNG before the next batch is drawn
    threads_trial = (None if trainer.cuda or cfg.train.threads or available_cores() < 2 or distributed.active()
                     else _ThreadTrial())
    pair_feed = pairs if pairs is not None else (feed if hasattr(feed, "sample_pairs") else None)

    def limit_reached() -> str | None:
        if limits.steps and trainer.step_count >= limits.steps:
            return "steps"
        if limits.minutes and trainer.train_seconds >= limits.minutes * 60:
            return "minutes"
        if stop is not None and stop():
            return "stop"
        return None

    def save() -> Path | None:
        nonlocal last_ckpt_t, last_ckpt_step
        try:
            path = save_checkpoint(run_dir, trainer.state_dict(numpy_rng_state=rng_state), keep=cfg.checkpoint.keep)
        except CheckpointWriteError as e:  # a full disk: training goes on, the next one is tried on schedule
            last_ckpt_t, last_ckpt_step = time.monotonic(), trainer.step_count
            log_event(logger, "checkpoint_failed", logging.WARNING, step=trainer.step_count, error=e)
            return None
        last_ckpt_t, last_ckpt_step = time.monotonic(), trainer.step_count
        log_event(logger, "checkpoint_saved", step=trainer.step_count, path=path)
        return path

    bar = tqdm(total=limits.steps or None, initial=trainer.step_count, unit="step", desc="train",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        stopped = distributed.agree(trainer, limit_reached()) or ""  # several ranks: stop together
        batch = None if stopped else next_batch(feed, n, trainer.rng, host.next(), stop, cfg.samples.wait_log_s)
        if distributed.agree(trainer, "stop" if batch is None else None):  # several ranks: all start or none
            batch = None
        pair_batch = trainer.draw_pairs(pair_feed) if batch is not None else None
        while batch is not None:
            t0 = time.monotonic()
            trainer.progress = budget_used(trainer, limits)
            head_inputs = trainer.upload_heads(batch, pair_batch) if trainer.heads else None
            pending = trainer.forward_backward(*trainer.upload(batch, host.pinned(batch) if trainer.cuda else None),
                                               head_inputs)
            rng_state = trainer.rng.bit_generator.state
            batch = next_batch(feed, n, trainer.rng, host.next(), stop, cfg.samples.wait_log_s)  # while the GPU works
            pair_batch = trainer.draw_pairs(pair_feed) if batch is not None else None
            result = trainer.update(pending)
            want_checkpoint = bool(on_step(trainer, result)) if on_step is not None and not result.skipped else False
            if threads_trial is not None and not result.skipped:
                threads_trial = threads_trial.check(trainer, feed)
            trainer.train_seconds += time.monotonic() - t0
            bar.update(0 if result.skipped else 1)
            if not result.skipped:
                interval_losses.append(result.loss)
                interval_crops += result.crops
                ema = result.loss if ema is None else 0.98 * ema + 0.02 * result.loss
                for name, value in result.losses.items():
                    interval_heads.setdefault(name, []).append(value)
            if trainer.step_count % cfg.train.log_every == 0 and not result.skipped and interval_losses:
                now = time.monotonic()
                rate = interval_crops / max(now - last_log_t, 1e-9)
                last_loss = float(np.mean(interval_losses))
                first_loss = last_loss if math.isnan(first_loss) else first_loss
                record = {"step": trainer.step_count, "loss": round(last_loss, 5), "lr": result.lr,
                          "crops_per_s": round(rate, 1), "grad_norm": round(result.grad_norm, 4),
                          "nan_skipped": trainer.nan_skipped, "train_s": round(trainer.train_seconds, 2),
                          "time": round(time.time(), 3)}
                if interval_heads:  # each head's loss of the interval (unweighted), when it had one
                    last_heads = {k: float(np.mean(v)) for k, v in interval_heads.items()}
                    record.update({f"loss_{k}": round(v, 5) for k, v in last_heads.items()})
                if log_fd is not None:
                    try:
                        append_line(log_fd, (_json(record) + "\n").encode())
                    except OSError as e:  # a full disk costs this line of train.jsonl, not the run
                        log_event(logger, "train_log_failed", logging.WARNING, step=trainer.step_count, error=e)
                extra = f" {status()}" if status is not None else ""
                heads = "".join(f" {_SHORT.get(k, k)} {v:.3f}" for k, v in last_heads.items()) if interval_heads else ""
                bar.set_postfix_str(f"loss {ema:.3f}{heads} {rate:.0f} crops/s{extra}", refresh=False)
                interval_losses, interval_crops, last_log_t = [], 0, now
                interval_heads = {}
            if run_dir is not None and not result.skipped:
                k = cfg.checkpoint
                due_steps = k.every_steps and trainer.step_count - last_ckpt_step >= k.every_steps
                due_time = k.every_minutes and time.monotonic() - last_ckpt_t >= k.every_minutes * 60
                if due_steps or due_time or want_checkpoint:
                    checkpoint = save() or checkpoint
            stopped = distributed.agree(trainer, limit_reached()) or ""
            if stopped:
                break
        stopped = stopped or "stop"
    except interrupts as e:
        stopped, interrupted_by = "interrupted", type(e).__name__
        trainer.abandon_step()
    except BaseException:
        trainer.abandon_step()
        raise
    finally:
        bar.close()
        try:
            if run_dir is not None and trainer.step_count > last_ckpt_step:
                checkpoint = save() or checkpoint  # at shutdown, whatever the reason
        finally:
            if log_fd is not None:
                os.close(log_fd)
    if interval_losses:
        last_loss = float(np.mean(interval_losses))
        first_loss = last_loss if math.isnan(first_loss) else first_loss
    return Summary(step=trainer.step_count, steps=trainer.step_count - start_step,
                   crops=trainer.crops_seen - start_seen, seconds=time.monotonic() - t_start,
                   first_loss=first_loss, last_loss=last_loss, nan_skipped=trainer.nan_skipped - start_nan,
                   stopped=stopped, checkpoint=checkpoint, interrupted_by=interrupted_by,
                   last_losses={k: float(np.mean(v)) for k, v in interval_heads.items()} or last_heads)


_SHORT = {"mask": "mask", "embedding": "emb", "segments": "seg"}  # progress bar labels


class _ThreadTrial:
    """Offline on the CPU, torch runs one thread fewer than the cores while the streamer process
    streams the inputs. Once it is done, try all cores for a few steps and keep them only if steps
    got faster: on a machine busy with other work, an intra-op pool that waits for a busy core is
    several times slower than one thread fewer (measured here: 353 ms a step became 4177).
    A trial that lost is tried again RETRY_STEPS later: the other work may have been brief."""

    STEPS = 5  # steps timed with all cores
    RETRY_STEPS = 1000

    def __init__(self, not_before: int = 0) -> None:
        self.before: float | None = None  # seconds per step with the streamer's threads
        self.mark = (0, 0.0)  # (step, train_seconds) where the current timing started
        self.old = torch.get_num_threads()
        self.not_before = not_before  # step at which a retry starts timing

    def check(self, trainer: Trainer, feed: Feed) -> "_ThreadTrial | None":
        """Call after every step; returns None once all cores are kept."""
        step, t = trainer.step_count, trainer.train_seconds
        if self.before is None:  # waiting for the streamer; time the last 25 steps
            if step % 25 or step == self.mark[0]:
                return self
            if not feed.finished() or step < self.not_before + 25:
                self.mark = (step, t)
                return self
            self.before = (t - self.mark[1]) / (step - self.mark[0])
            torch.set_num_threads(available_cores())
            self.mark = (step, t)
            return self
        n = step - self.mark[0]
        after = (t - self.mark[1]) / max(n, 1)
        if n < self.STEPS and after < 3 * self.before:  # a much slower step ends the trial at once
            return self
        kept = after < 0.95 * self.before
        if not kept:
            torch.set_num_threads(self.old)
        log_event(logger, "train_threads", threads=torch.get_num_threads(), tried=available_cores(),
                  ms_per_step_before=round(self.before * 1000, 1), ms_per_step_tried=round(after * 1000, 1),
                  retry_at_step=None if kept else step + self.RETRY_STEPS)
        return None if kept else _ThreadTrial(not_before=step + self.RETRY_STEPS)


def _json(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"))
