"""`motionmask learn`: the learner role on its own machine (a GPU box). Takes training samples
in from any number of rigs (`motionmask run` with learner.enabled: false and learner.remote set)
on learner.listen, into its own ring buffer; trains, bootstraps, checkpoints to learner.run_dir
(a restart resumes there), exports through the export gate and serves bundles to the rigs and
devices (export.endpoint). Cameras in the config are ignored: they belong to the rigs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import zmq

from common.errors import UserError
from motionmask.commands.options import parse_count
from motionmask.config import Config, load_config
from motionmask.daemon import run_daemon

EPILOG = """examples:
  motionmask learn --config configs/learner.yaml    # on the GPU machine
  motionmask learn --config configs/learner.yaml --nproc 4   # DDP on 4 GPUs (docs/distributed.md)
  motionmask status --endpoint tcp://gpu-box:5556   # per rig: received, dropped, last seen, kB/s; the appetite

and on each rig (its config: learner.enabled: false, learner.remote: tcp://gpu-box:5562,
export.enabled: true for student masks from the learner's bundles):
  motionmask run --config configs/rig.yaml

The learner listens on learner.listen (default tcp://127.0.0.1:5562; tcp://*:5562 for every
interface, then consider learner.transport.curve_secret_file) and serves bundles on
export.endpoint (5560). Rigs and learner start and stop in any order: rigs reconnect by
themselves and drop (and count) samples while the learner is away. Exit status 2: a config or
environment problem (a port in use, a typo in a key), said in one line."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "learn",
        help="the learner role: train on samples that rigs send over the network",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="YAML config: learner, buffer, export, daemon sections (see configs/learner.yaml)",
    )
    p.add_argument(
        "--nproc",
        default=None,
        metavar="N",
        help="data-parallel ranks on this machine: N GPUs on CUDA, "
        "N processes on the CPU; rank 0 receives, checkpoints and exports (default: learner.train.nproc = 1)",
    )
    return p


def learn_config(cfg: Config) -> Config:
    """The config as the learn role runs it: the learner on, no cameras; ports checked."""
    cfg.learner.enabled = True
    cfg.learner.remote = ""
    cfg.cameras = []
    listen = cfg.learner.listen
    taken = {"daemon.control_endpoint": cfg.daemon.control_endpoint}
    if cfg.publish.enabled:
        taken.update({"publish.endpoint": cfg.publish.endpoint, "publish.latest_endpoint": cfg.publish.latest_endpoint})
    if cfg.export.enabled and cfg.export.serve:
        taken.update({"export.endpoint": cfg.export.endpoint, "export.announce_endpoint": cfg.export.announce_endpoint})
    for key, ep in taken.items():
        if ep and ep == listen:
            raise UserError(
                f"learner.listen {listen} is also {key}; give the samples a port of their own "
                f"(default tcp://127.0.0.1:5562)"
            )
    return cfg


def probe_listen(endpoint: str, wait_s: float = 3.0) -> None:
    """Fail now, in one line, when learner.listen cannot be bound; a learner killed a moment ago
    may still hold the port while its receiver notices and exits, so it is tried for wait_s."""
    if not endpoint.startswith("tcp://") or endpoint.endswith(":*"):
        return
    ctx = zmq.Context.instance()
    deadline = time.monotonic() + wait_s
    while True:
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.bind(endpoint)
            return
        except zmq.ZMQError as e:
            if time.monotonic() >= deadline:
                raise UserError(
                    f"learner.listen {endpoint} cannot be bound ({e.strerror}); another motionmask "
                    f"learn? stop it or set learner.listen to a free address"
                ) from None
        finally:
            s.close(0)
        time.sleep(0.2)


def run(args: argparse.Namespace) -> int:
    cfg = learn_config(load_config(args.config))
    nproc = parse_count("--nproc", getattr(args, "nproc", None), minimum=1)
    t = cfg.learner.train
    t.nproc = t.nproc if nproc is None else nproc
    if t.nproc > 1 and cfg.learner.heads.extra():
        raise UserError(
            f"--nproc {t.nproc} with learner.heads {', '.join(cfg.learner.heads.extra())}: the multi-task "
            f"heads do not train on several ranks yet; run them with --nproc 1"
        )
    probe_listen(cfg.learner.listen)
    return run_daemon(cfg, getattr(args, "log_level", "INFO"), role="learn")
