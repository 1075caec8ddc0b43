"""`motionmask train INPUT... --out RUN`: run the streamer on videos (no frame dropped) and train
the mask ConvNet on the frames it keeps, until --steps or --minutes; resumable."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator

from tqdm.contrib.logging import logging_redirect_tqdm

from common.errors import UserError
from common.log import log_event
from motionmask.commands.options import info_logs, parse_count
from motionmask.commands.signals import Terminated, signals_as_exceptions
from motionmask.config import load_config
from streamer.motion.prune import FEW_KEPT_FRACTION, pruned_summary, relax_hint
from streamer.writer import check_out_dir

logger = logging.getLogger(__name__)

MIN_FRAMES_TO_JUDGE = 20  # fewer, and a low keep rate may be the first frames of each shot

EPILOG = """examples:
  motionmask synth --out synth/ --clips 10
  motionmask train synth/ --out runs/r1                      # 12 minutes (learner.train.minutes)
  motionmask train a.mp4 b.mp4 frames/ --out runs/r2 --steps 5000 --minutes 0 --device cuda
  motionmask train synth/ --out runs/r3 --nproc 4 --device cuda   # DDP on 4 GPUs (torchrun's agent)
  torchrun --standalone --nproc-per-node 8 -m motionmask.cli train synth/ --out runs/r4 --device cuda
  motionmask predict --checkpoint runs/r1/checkpoints/last.pt clip.mp4 --out pred/

INPUT: video files, folders of videos (their videos, in natural order), or folders of images
(one sequence each). The streamer runs on them in a separate process and never drops a frame:
when the learner lags it waits. Training starts with the first kept frames and goes on over the
buffer of all kept frames until --steps or --minutes, whichever comes first.

writes RUN/checkpoints/step_XXXXXXX.pt (the newest learner.checkpoint.keep) and RUN/checkpoints/
last.pt (always the newest whole one), on a schedule and at the end (also on Ctrl-C), and
RUN/train.jsonl (step, loss, lr, crops/s every learner.train.log_every steps) and RUN/bootstrap.jsonl
(one line per bootstrapping round: learner.bootstrap refines the labels every every_steps; on
`motionmask synth` clips also the labels' IoU and accuracy against the ground truth). Run the same
command again to resume a run: --steps and --minutes count the whole run.

Progress: a bar on a terminal; with stderr redirected to a file or a pipe, one log line
(event=train_progress: step, loss, crops/s, lr, training seconds) every learner.train.log_every steps.

--nproc N: data-parallel training (DistributedDataParallel) in N ranks, one GPU each on CUDA (nccl),
N processes on the CPU (gloo). Each rank samples its own batches from one shared buffer, so a step
trains on N x learner.train.batch crops; rank 0 alone streams, bootstraps, logs and checkpoints,
and a resumed run restores every rank. One machine: the ranks share rank 0's buffer in shared
memory. Under torchrun (--nproc-per-node N) the command runs the same; docs/distributed.md."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train the mask ConvNet on videos (offline), resumable",
        description="Compute motion masks of videos and train a ConvNet to predict them from single "
        "frames (Pathak et al. 2017), until a step or time budget; checkpoints are resumable.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders of videos or folders of images")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (created; an existing run there is resumed)")
    p.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults, as configs/default.yaml)")
    p.add_argument(
        "--steps",
        default=None,
        metavar="N",
        help="stop at step N of the run; 0 = no step limit (default: learner.train.steps)",
    )
    p.add_argument(
        "--minutes",
        default=None,
        metavar="M",
        help="stop after M minutes of training in the run; 0 = no time limit (default: learner.train.minutes = 12)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="default: learner.train.device (auto: CUDA when present)",
    )
    p.add_argument(
        "--nproc",
        default=None,
        metavar="N",
        help="data-parallel ranks: N GPUs on CUDA, N processes on the CPU "
        "(default: learner.train.nproc = 1; under torchrun, its --nproc-per-node)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (bar or lines) and no info logs; warnings and the summary remain",
    )
    return p


def parse_minutes(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--minutes {text!r}: expected a number >= 0") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--minutes {text}: must be a number >= 0")
    return value


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    t = cfg.learner.train
    steps = parse_count("--steps", args.steps, minimum=0)
    minutes = parse_minutes(args.minutes)
    t.steps = t.steps if steps is None else steps
    t.minutes = t.minutes if minutes is None else minutes
    t.device = args.device or t.device
    nproc = parse_count("--nproc", args.nproc, minimum=1)
    t.nproc = t.nproc if nproc is None else nproc
    if not t.steps and not t.minutes:
        raise UserError("no budget: --steps 0 and --minutes 0 would train forever; give one of them")
    out = check_out_dir(args.out)
    ranked = int(os.environ.get("WORLD_SIZE", "1")) > 1  # a rank of --nproc or of torchrun
    if t.nproc > 1 and not ranked:
        if cfg.learner.heads.extra():
            raise UserError(
                f"--nproc {t.nproc} with learner.heads {', '.join(cfg.learner.heads.extra())}: the multi-task "
                f"heads do not train on several ranks yet; train them with --nproc 1"
            )
        return _launch(args, t.nproc, t.device)
    if ranked and int(os.environ.get("RANK", "0")) > 0:
        args.quiet = True  # rank 0 speaks for the run
    with info_logs(not args.quiet), _learner_info_logs(not args.quiet), signals_as_exceptions():
        code = _run(args, cfg, out)
    if ranked:
        from learner.distributed import shutdown

        shutdown()
    return code


def _launch(args: argparse.Namespace, nproc: int, device: str) -> int:
    """--nproc N: this command in N ranks under torch's elastic agent (what torchrun runs); rank 0's
    exit status, or the first failure's. The agent's own logs stay quiet: one line per failure."""
    import torch
    import torch.distributed.launcher.api  # noqa: F401  (the agent's loggers exist before they are quieted)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from learner.distributed import launch
    from learner.samples import expand_inputs

    expand_inputs(args.inputs)  # a wrong path is one line from here, not one from every rank
    gpus = torch.cuda.device_count() if device != "cpu" and torch.cuda.is_available() else 0
    if gpus and nproc > gpus:
        raise UserError(
            f"--nproc {nproc}: this machine shows {gpus} GPU(s), one per rank; use --nproc {gpus} "
            f"or fewer (or --device cpu)"
        )
    quiet = [
        lg
        for name, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger) and name.startswith(("torch.distributed", "torch.multiprocessing"))
    ]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.CRITICAL)
    try:
        return int(launch(nproc, _rank, args)[0] or 0)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode not in (130, 143) and (rank or failure.exitcode != 2):  # rank 0 printed its own
            data = failure.message if isinstance(failure.message, dict) else {}
            why = data.get("message") or f"exit code {failure.exitcode}"
            trace = data.get("extraInfo", {}).get("py_callstack", "") if not why.startswith("UserError") else ""
            print(f"{trace}motionmask train: rank {rank} failed: {why.removeprefix('UserError: ')}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as e:  # SIGTERM or SIGINT here: the agent passed it on to the ranks, which saved
        return 128 + int(e.sigval)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


def _rank(args: argparse.Namespace) -> int:
    """One rank of --nproc (the agent sets RANK, WORLD_SIZE, ... in its environment). Rank 0
    prints its errors like the command; another rank's error reaches _launch through the agent."""
    from motionmask.cli import setup_logging

    setup_logging(args.log_level)
    try:
        code = run(args)
    except (UserError, OSError) as e:
        if int(os.environ.get("RANK", "0")) > 0:
            raise
        print(f"motionmask train: error: {e}", file=sys.stderr)
        code = 2
    if code:
        sys.exit(code)  # a failed rank: the agent stops the others
    return 0


@contextlib.contextmanager
def _learner_info_logs(enabled: bool) -> Iterator[None]:
    """--quiet for the learner's loggers too (info_logs covers streamer and motionmask)."""
    lg = logging.getLogger("learner")
    level = lg.level
    if not enabled:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lg.setLevel(level)


def _run(args: argparse.Namespace, cfg, out) -> int:
    # torch loads here, not at import: `motionmask --help` stays fast
    from learner import distributed
    from learner.device import available_cores, resolve_device
    from learner.progress import draws_bar
    from learner.train import Limits, Trainer, fit

    t = cfg.learner.train
    main = distributed.is_main()  # with several ranks the others sample rank 0's buffer (share_feed)
    feed = _offline_feed(args, cfg) if main else None
    trainer = Trainer(cfg.learner, distributed.init(resolve_device(t.device, t.strict_device)))
    if trainer.cuda and main:
        feed.streamer_threads = max(1, available_cores() - 2)  # the GPU trains: the CPUs can stream
    limits = Limits(steps=t.steps, minutes=t.minutes)
    if _resume(trainer, out, limits, main):
        return 0
    distributed.wrap(trainer)
    _log_start(cfg, trainer, feed, out, main)

    def status() -> str:
        p = feed.progress
        return "" if p.done else f"streamer {p.inputs_done}/{p.inputs} inputs, {p.kept} kept"

    bar = draws_bar(not args.quiet)  # on a terminal: logs go above the bar; elsewhere one line per interval
    with distributed.share_feed(feed) as feed, logging_redirect_tqdm() if bar else contextlib.nullcontext():
        boot = _bootstrapper(cfg, feed, out) if cfg.learner.bootstrap.enabled and main else None
        summary = fit(
            trainer,
            feed,
            out if main else None,
            limits,
            progress=not args.quiet,
            status=status if main else None,
            interrupts=(KeyboardInterrupt, Terminated),
            on_step=boot.on_step if boot else None,
        )
    code = {"Terminated": 143, "KeyboardInterrupt": 130}.get(summary.interrupted_by, 0)
    if main:
        _report(summary, trainer, feed.progress, boot, interrupted=bool(code))
        warn_if_few_kept(feed.progress, cfg.streamer.prune)
    return code


def _offline_feed(args: argparse.Namespace, cfg):
    """The streamer over the inputs, in its own process, filling the buffer the learner samples."""
    from learner.samples import OfflineFeed

    return OfflineFeed(
        args.inputs,
        cfg.streamer,
        cfg.buffer,
        cfg.learner.samples.offline_draws_per_sample,
        cfg.learner.samples.offline_max_buffer_mb,
        streamer_threads=1,  # inputs checked here
        log_level=logging.WARNING if args.quiet else None,
    )


def _log_start(cfg, trainer, feed, out, main: bool) -> None:
    t = cfg.learner.train
    log_event(
        logger,
        "train_start",
        out=out,
        inputs=len(feed.specs) if main else None,
        device=trainer.device.type,
        precision=trainer.precision,
        backbone=cfg.learner.model.backbone,
        crop=trainer.crop_size,
        batch=t.batch,
        steps=t.steps,
        minutes=t.minutes,
        start_step=trainer.step_count,
    )


def _bootstrapper(cfg, feed, out):
    """Rounds that refine the labels in the feed's buffer (learner/bootstrap.py)."""
    from learner.bootstrap import Bootstrapper, synthetic_ground_truth

    return Bootstrapper(
        cfg.learner.bootstrap,
        cfg.streamer.trimap,
        feed.ring,
        out,
        ground_truth=synthetic_ground_truth(feed.specs),
        fg_threshold=cfg.streamer.prune.fg_threshold,
    )


def _resume(trainer, out, limits, main: bool) -> bool:
    """Resume the run in `out` if it has a checkpoint; True when it is complete already (one line says so)."""
    from learner.checkpoint import find_resume

    resumed = find_resume(out, trainer.device)
    if resumed is None:
        return False
    path, state = resumed
    trainer.load_state_dict(state, path)
    log_event(
        logger,
        "train_resume",
        checkpoint=path,
        step=trainer.step_count,
        trained_min=round(trainer.train_seconds / 60, 2),
    )
    if (limits.steps and trainer.step_count >= limits.steps) or (
        limits.minutes and trainer.train_seconds >= limits.minutes * 60
    ):
        if main:
            print(
                f"motionmask train: {out} is complete (step {trainer.step_count}, "
                f"{trainer.train_seconds / 60:.1f} min trained); raise --steps or --minutes to go on",
                file=sys.stderr,
            )
        return True
    return False


def _report(summary, trainer, p, boot, interrupted: bool) -> None:
    """The run's last log event and its one-line summary on stderr. p: the streamer's progress."""
    from learner import distributed

    note = "interrupted; " if interrupted else ""
    nan = f", {summary.nan_skipped} non-finite steps skipped" if summary.nan_skipped else ""
    rounds = f", {len(boot.history)} bootstrapping rounds" if boot is not None and boot.history else ""
    loss = (
        f"loss {summary.first_loss:.3f} -> {summary.last_loss:.3f}"
        if not math.isnan(summary.last_loss)
        else "no loss logged"
    )
    where = summary.checkpoint.parent / "last.pt" if summary.checkpoint else "no checkpoint (no step done)"
    ranks = f" x {distributed.world_size()} ranks" if distributed.active() else ""
    log_event(
        logger,
        "train_done",
        step=summary.step,
        steps=summary.steps,
        crops=summary.crops,
        crops_per_s=summary.crops_per_s,
        stopped=summary.stopped,
        loss=summary.last_loss,
        nan_skipped=summary.nan_skipped,
        frames=p.frames,
        kept=p.kept,
    )
    print(
        f"motionmask train: {note}{summary.steps} steps (run at step {summary.step}), {summary.crops} crops, "
        f"{summary.crops_per_s:.0f} crops/s, {summary.seconds / 60:.1f} min on {trainer.device.type}{ranks}, "
        f"{loss}{nan}{rounds}; "
        f"{p.kept} samples kept of {p.frames} frames streamed from {p.inputs_done}/{p.inputs} inputs -> {where}",
        file=sys.stderr,
    )


def warn_if_few_kept(p, prune_cfg) -> None:
    """One warning line when pruning kept under FEW_KEPT_FRACTION of the frames, with the reasons and
    the threshold to change."""
    if p.frames < MIN_FRAMES_TO_JUDGE or p.kept >= FEW_KEPT_FRACTION * p.frames:
        return
    hint = relax_hint(p.pruned, prune_cfg)
    print(
        f"motionmask train: warning: pruning kept {p.kept} of {p.frames} frames ({pruned_summary(p.pruned)})"
        f"{'; ' + hint if hint else ''}",
        file=sys.stderr,
    )
