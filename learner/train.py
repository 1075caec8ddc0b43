"""Training: the training step and the loop around it. Read it top to bottom.

    trainer = Trainer(cfg.learner)            # model, AdamW, RNGs, counters: what a checkpoint holds
    trainer.step(batch)                       # one step on a Batch of ring-buffer samples
    fit(trainer, feed, run_dir, Limits(steps=2000, minutes=12))   # the loop: logs, checkpoints, limits

One training step = Trainer.queue_step (1-4) + Trainer.update (5):
  1. crops     N buffer samples -> N x per_frame jittered crops with their trimaps, on the device
               (learner/crops.py)
  2. forward   normalise; channels_last and bf16 autocast on CUDA and on CPUs with native bf16
               (learner.train.cpu_precision, learner/device.py), else float32
  3. loss      binary cross-entropy on the trimap's positive and negative pixels only (learner/loss.py);
               with extra heads enabled (learner.heads), their losses too, on the same backbone
               step: segments against the flow cropped like the image (learner/grouping_loss.py),
               embeddings of tracked-patch pairs (learner/embedding_loss.py); the weighted sum
  4. backward  and clip the global gradient norm
  5. update    one host sync reads the loss and the gradient norm. Not finite: the step is skipped
               (no AdamW update, batch-norm statistics restored), counted, and `max_nan_steps` in a
               row stop the run with an error. Finite: set this step's learning rate, AdamW step.

The loop (fit) overlaps the CPU and the GPU: while the GPU runs step k (CUDA calls return at
once), the CPU copies the samples of step k+1 out of the buffer into the other of two pinned host
batches. Around the steps: train.jsonl lines and the progress display every log_every steps
(learner/progress.py), checkpoints when the clock says (learner/checkpoint.py CheckpointClock),
the limits, and with several ranks one decision for all (learner/distributed.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError, first_line
from common.log import log_event
from learner import distributed
from learner.checkpoint import FORMAT, VERSION, CheckpointClock, CheckpointWriteError, check_compatible, save_checkpoint
from learner.config import LearnerConfig
from learner.crops import crop_flow, make_crops
from learner.device import ThreadTrial, available_cores, cpu_threads, resolve_device, use_bf16
from learner.embedding_loss import triplet_loss
from learner.grouping_loss import segments_loss
from learner.heads import HeadInputs, forward_heads
from learner.loss import masked_bce
from learner.model import architecture, build_model, output_size
from learner.progress import IntervalLog, TrainLog, display
from learner.samples import Feed, next_batch
from streamer.shm.ringbuffer import Batch

logger = logging.getLogger(__name__)

# the layers whose running statistics a skipped step restores
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class NonFiniteLoss(UserError):
    """The loss stayed NaN/inf for max_nan_steps steps in a row."""


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
        self.device = (
            device if isinstance(device, torch.device) else resolve_device(device or t.device, t.strict_device)
        )
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
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr,
            betas=(0.9, 0.99),
            fused=True if self.cuda else None,
        )
        self._bn = [
            b
            for m in self.model.modules()
            if isinstance(m, BATCH_NORMS)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)
            if b is not None
        ]
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
    def step(self, batch: Batch, pairs=None) -> StepResult:
        """One whole training step on a batch of buffer samples (fit() overlaps the two halves);
        pairs: a PairBatch of tracked patches for the embedding head (learner/pairs.py)."""
        return self.update(self.queue_step(batch, pairs))

    def queue_step(self, batch: Batch, pairs=None, host: HostBatches | None = None) -> _Pending:
        """Steps 1-4 on a batch: its samples (and pairs) on the device, crops, forward, loss,
        backward. On CUDA this only queues work; from a HostBatches batch the copies are asynchronous."""
        extra = self.upload_heads(batch, pairs) if self.heads else None
        pinned = host.pinned(batch) if host is not None and self.cuda else None
        return self.forward_backward(*self.upload(batch, pinned), extra)

    def lr_now(self) -> float:
        t = self.cfg.train
        warm = min(1.0, (self.step_count + 1) / t.warmup_steps) if t.warmup_steps else 1.0
        if t.schedule == "constant" or self.progress is None:
            return t.lr * warm
        p = min(max(self.progress, 0.0), 1.0)
        return t.lr * warm * (t.min_lr_fraction + (1 - t.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * p)))

    def upload(
        self, batch: Batch, pinned: dict[str, torch.Tensor] | None = None
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
        return (
            frames.to(self.device, non_blocking=nb),
            trimaps.to(self.device, non_blocking=nb),
            valid.to(self.device),
        )

    def forward_backward(
        self, frames: torch.Tensor, trimaps: torch.Tensor, valid: torch.Tensor, extra: HeadInputs | None = None
    ) -> _Pending:
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
        self._pending = _Pending(
            loss.detach(), norm.detach(), crops_all_ranks, gen_state, {k: v.detach() for k, v in losses.items()}
        )
        return self._pending

    def head_losses(
        self, mask_loss: torch.Tensor, outputs: dict[str, torch.Tensor], crops, valid: torch.Tensor, extra: HeadInputs
    ) -> dict[str, torch.Tensor]:
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
            log_event(
                logger,
                "nan_step_skipped",
                logging.WARNING,
                step=self.step_count,
                loss=loss,
                grad_norm=norm,
                in_a_row=self.nan_streak,
                total=self.nan_skipped,
            )
            if self.nan_streak >= self.cfg.train.max_nan_steps:
                raise NonFiniteLoss(
                    f"training stopped: the loss was not finite for {self.nan_streak} steps in a row "
                    f"(learner.train.max_nan_steps) after step {self.step_count}; lower learner.train.lr "
                    f"or check the input frames"
                )
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
            why = (
                "no pair feed"
                if pair_feed is None
                else f"{got} pair(s) from {groups} shot(s) in the store; negatives need two "
                f"(streamer.patches.enabled mines pairs from moving objects)"
            )
            if self._pairs_missing is None:
                log_event(
                    logger,
                    "embedding_no_pairs",
                    logging.WARNING,
                    step=self.step_count,
                    reason=why,
                    effect="embedding loss skipped until pairs arrive",
                )
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
            "format": FORMAT,
            "version": VERSION,
            "step": self.step_count,
            "arch": self.arch,
            "config": dataclasses.asdict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": numpy_rng_state or self.rng.bit_generator.state,
                "torch": torch.get_rng_state(),
                "cuda": cuda_rng,
                "crops": self.gen.get_state(),
                "crops_device": self.device.type,
            },
            "counters": {
                "nan_skipped": self.nan_skipped,
                "crops_seen": self.crops_seen,
                "train_seconds": self.train_seconds,
            },
            "slot_size": list(self.slot_size) if self.slot_size else None,
            "saved_at": time.time(),
            "torch_version": str(torch.__version__),
        }

    def load_state_dict(self, state: dict, path: str | Path = "checkpoint") -> None:
        """Restore a checkpoint of the same architecture (else a UserError naming the difference)."""
        check_compatible(state, self.arch, path)
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(f"{path}: checkpoint does not fit the model ({first_line(e)})") from None
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
            t = {
                "frames": torch.empty((capacity, height, width, 3), dtype=torch.uint8, pin_memory=pin),
                "trimaps": torch.empty((capacity, height, width), dtype=torch.uint8, pin_memory=pin),
            }
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


def limit_reached(trainer: Trainer, limits: Limits, stop: Callable[[], bool] | None) -> str | None:
    """Why the run ends now (steps | minutes | stop), or None; with several ranks pass it through
    distributed.agree, so that all stop after the same step."""
    if limits.steps and trainer.step_count >= limits.steps:
        return "steps"
    if limits.minutes and trainer.train_seconds >= limits.minutes * 60:
        return "minutes"
    if stop is not None and stop():
        return "stop"
    return None


def fit(
    trainer: Trainer,
    feed: Feed,
    run_dir: str | Path | None,
    limits: Limits,
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
    status: Callable[[], str] | None = None,
    interrupts: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
    on_step: Callable[[Trainer, StepResult], bool] | None = None,
    pairs=None,
) -> Summary:
    """Train on samples from `feed` until a limit is reached or `stop()` turns true. Writes
    RUN/train.jsonl and checkpoints (on the configured schedule and at the end, also after an
    interrupt or an error); run_dir None: neither. progress: a bar on a terminal, a log line per
    interval otherwise (learner/progress.py); `status()` adds text to it.
    `on_step(trainer, result)` runs after every applied step (bootstrapping rounds, reports; its
    time counts as training time); returning True asks for a checkpoint of this step.
    An exception of a type in `interrupts` ends the loop like a limit (stopped="interrupted");
    any other propagates, after the final checkpoint.
    pairs: a PairFeed (learner/pairs.py) for the embedding head; default: the feed itself when it
    has sample_pairs (RingFeed, OfflineFeed). Without pairs the embedding loss is skipped (one log line)."""
    run_dir = Path(run_dir) if run_dir is not None else None
    draw = _Draw(trainer, feed, pairs, stop)  # the next batch of buffer samples and its pairs
    log = IntervalLog(
        trainer.cfg.train.log_every, TrainLog.open(run_dir), display(progress, limits.steps, trainer.step_count, status)
    )
    k = trainer.cfg.checkpoint
    clock = CheckpointClock(k.every_steps, k.every_minutes, trainer.step_count)
    threads = ThreadTrial() if _try_all_cores(trainer) else None
    start = _Start.of(trainer)
    checkpoint, stopped, interrupted_by = None, "stop", ""
    try:
        stopped = distributed.agree(trainer, limit_reached(trainer, limits, stop)) or ""  # several ranks: together
        batch, pair_batch = draw.first(skip=bool(stopped))
        while batch is not None:
            t0 = time.monotonic()
            trainer.progress = budget_used(trainer, limits)
            pending = trainer.queue_step(batch, pair_batch, draw.host)  # steps 1-4; on CUDA only queued
            batch, pair_batch = draw.next()  # while the GPU works
            result = trainer.update(pending)  # step 5
            asked = bool(on_step(trainer, result)) if on_step is not None and not result.skipped else False
            if threads is not None and not result.skipped:
                threads = threads.check(trainer, feed)
            trainer.train_seconds += time.monotonic() - t0
            log.add(trainer, result)
            if run_dir is not None and not result.skipped and clock.due(trainer.step_count, asked):
                checkpoint = save(trainer, run_dir, clock, draw.rng_state) or checkpoint
            stopped = distributed.agree(trainer, limit_reached(trainer, limits, stop)) or ""
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
        log.close_display()
        try:
            if run_dir is not None and trainer.step_count > clock.step:  # at shutdown, whatever the reason
                checkpoint = save(trainer, run_dir, clock, draw.rng_state) or checkpoint
        finally:
            losses = log.close()
    return start.summary(trainer, losses, stopped, checkpoint, interrupted_by)


def save(trainer: Trainer, run_dir: Path, clock: CheckpointClock, numpy_rng_state: dict) -> Path | None:
    """A checkpoint of this step (numpy_rng_state: the sampling RNG before the batch fit() has
    drawn ahead). A failed write (a full disk) is logged and training goes on: the next is tried
    on schedule."""
    try:
        path = save_checkpoint(
            run_dir, trainer.state_dict(numpy_rng_state=numpy_rng_state), keep=trainer.cfg.checkpoint.keep
        )
    except CheckpointWriteError as e:
        clock.saved(trainer.step_count)
        log_event(logger, "checkpoint_failed", logging.WARNING, step=trainer.step_count, error=e)
        return None
    clock.saved(trainer.step_count)
    log_event(logger, "checkpoint_saved", step=trainer.step_count, path=path)
    return path


class _Draw:
    """fit()'s samples: the next batch of buffer samples (into one of two host batches) with its
    tracked-patch pairs, and the sampling RNG's state before it was drawn (what a checkpoint of
    the step before must hold, so that a resumed run draws this batch again)."""

    def __init__(self, trainer: Trainer, feed: Feed, pairs, stop: Callable[[], bool] | None):
        cfg = trainer.cfg
        self.trainer, self.feed, self.stop = trainer, feed, stop
        self.n = max(1, math.ceil(cfg.train.batch / cfg.crops.per_frame))  # buffer samples per step
        self.host = HostBatches(self.n, feed.height, feed.width, pin=trainer.cuda)
        trainer.slot_size = (feed.height, feed.width)
        self.pair_feed = pairs if pairs is not None else (feed if hasattr(feed, "sample_pairs") else None)
        self.rng_state = trainer.rng.bit_generator.state

    def first(self, skip: bool) -> tuple[Batch | None, object]:
        """The first batch, waiting for samples; None when skipped, stopped, or another rank has none."""
        batch = None if skip else self._batch()
        if distributed.agree(self.trainer, "stop" if batch is None else None):  # several ranks: all start or none
            batch = None
        return batch, self._pairs(batch)

    def next(self) -> tuple[Batch | None, object]:
        self.rng_state = self.trainer.rng.bit_generator.state
        batch = self._batch()
        return batch, self._pairs(batch)

    def _batch(self) -> Batch | None:
        t = self.trainer
        return next_batch(self.feed, self.n, t.rng, self.host.next(), self.stop, t.cfg.samples.wait_log_s)

    def _pairs(self, batch: Batch | None):
        return self.trainer.draw_pairs(self.pair_feed) if batch is not None else None


def _try_all_cores(trainer: Trainer) -> bool:
    """Offline on the CPU with threads on auto: once the streamer is done, try all cores (ThreadTrial)."""
    return not (trainer.cuda or trainer.cfg.train.threads or available_cores() < 2 or distributed.active())


@dataclass(frozen=True)
class _Start:
    """The run's counters when fit() began: its Summary counts from here."""

    step: int
    crops_seen: int
    nan_skipped: int
    time: float

    @classmethod
    def of(cls, trainer: Trainer) -> _Start:
        return cls(trainer.step_count, trainer.crops_seen, trainer.nan_skipped, time.monotonic())

    def summary(
        self,
        trainer: Trainer,
        losses: tuple[float, float, dict[str, float]],
        stopped: str,
        checkpoint: Path | None,
        interrupted_by: str,
    ) -> Summary:
        first, last, heads = losses
        return Summary(
            step=trainer.step_count,
            steps=trainer.step_count - self.step,
            crops=trainer.crops_seen - self.crops_seen,
            seconds=time.monotonic() - self.time,
            first_loss=first,
            last_loss=last,
            nan_skipped=trainer.nan_skipped - self.nan_skipped,
            stopped=stopped,
            checkpoint=checkpoint,
            interrupted_by=interrupted_by,
            last_losses=heads,
        )
