"""Data-parallel training (learner/distributed.py) on the CPU with the gloo backend, 2 ranks
started by torch's elastic agent, as `motionmask train --nproc 2` starts them:

- one training step on 2 ranks, each on its half of a batch, equals the single-process step on
  the whole batch (the real Trainer.step: crops, forward, masked BCE, backward, clip, AdamW)
  when batch norm is synchronised across the ranks; with per-rank batch norm it does not; a stop
  on one rank stops both after the same step
- `motionmask train --nproc 2`: the loss falls, a second run resumes from the checkpoint on both
  ranks, and the checkpoint exports to a bundle that passes the exporter's verification
"""

from __future__ import annotations

import itertools
import json
import threading

import cv2
import numpy as np
import pytest
import torch

from learner import distributed
from learner.checkpoint import load_checkpoint
from learner.config import LearnerConfig
from learner.samples import RingFeed
from learner.train import Limits, Trainer, fit
from motionmask.cli import main
from streamer.shm.ringbuffer import BufferConfig, RingBuffer, Sample, ring_bytes
from synth.things import generate

H, W, N = 72, 96, 8  # slots, and samples in the whole batch (4 per rank)
# float32 throughout; the ranks' sums and the single process's run in different orders. Measured:
# weights within 5e-7, running variances within 1e-6. A wrong step is far off: AdamW's first step
# moves a weight by about lr x sign(gradient), so a flipped sign is 4e-3 (2 x lr); per-rank batch
# norm, or a SyncBatchNorm2d whose backward skips its all-reduce, gives exactly that
ATOL = 1e-5


def step_config(sync_batchnorm: bool = True) -> LearnerConfig:
    """A tiny net, float32, and crops that are a function of the sample alone (no jitter, no
    flips, no colour, no copy-paste: the box is the object's bounding box), so that a rank cuts
    the same crops from its half as one process cuts from the whole batch."""
    cfg = LearnerConfig()
    cfg.model.width, cfg.model.blocks = 8, [1, 1, 1, 1]
    c = cfg.crops
    c.size, c.per_frame, c.context_min, c.context_max, c.shift, c.random_fraction = 64, 1, 1.0, 1.0, 0.0, 0.0
    c.flip, c.brightness, c.contrast, c.saturation, c.hue, c.grayscale, c.paste = False, 0, 0, 0, 0, 0, 0
    t = cfg.train
    t.device, t.cpu_precision, t.threads, t.warmup_steps, t.schedule = "cpu", "fp32", 1, 0, "constant"
    t.batch, t.sync_batchnorm = N, sync_batchnorm
    return cfg


def object_ring() -> RingBuffer:
    """N textured frames, each with one disc; the trimap has positives and negatives only (no
    "don't care"), so every rank counts as many labelled pixels (crop side squared per crop) and
    the mean of the ranks' mean losses is the whole batch's mean."""
    cfg = BufferConfig(train_width=W, train_height=H, memory_mb=ring_bytes(H, W, N + 2) / 2**20, per_shot_cap=N + 2)
    ring = RingBuffer.create(cfg)
    rng = np.random.default_rng(5)
    for i in range(N):
        assert ring.put(disc_sample(rng, i))
    return ring


def disc_sample(rng: np.random.Generator, i: int) -> Sample:
    img = cv2.resize(rng.integers(0, 255, (H // 8, W // 8, 3), dtype=np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)
    tri = np.zeros((H, W), np.uint8)
    r = int(rng.integers(10, 18))
    centre = (int(rng.integers(r + 2, W - r - 2)), int(rng.integers(r + 2, H - r - 2)))
    cv2.circle(tri, centre, r, 255, -1)
    cv2.circle(img, centre, r, tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    return Sample("cam", i, 0, i / 25, img, tri, tri, None, (0, 0, H, W), (H, W))


def one_step(cfg: LearnerConfig, ring: RingBuffer, rows: slice) -> tuple[Trainer, float]:
    trainer = distributed.wrap(Trainer(cfg, torch.device("cpu")))
    batch = ring.read(np.sort(ring.ready_slots())[rows])
    return trainer, trainer.step(batch).loss


def _rank_step(ring: RingBuffer, empty: RingBuffer) -> dict:
    """In each rank: one step on this rank's half, with synchronised and with per-rank batch norm;
    then short fit() runs in which only rank 1 asks to stop: after 3 steps, and while it waits
    for the first samples of an empty buffer (which rank 0 then fills)."""
    distributed.init(torch.device("cpu"))
    r, half = distributed.rank(), N // 2
    out = {"draw": None}
    for sync in (True, False):
        trainer, loss = one_step(step_config(sync), ring, slice(r * half, (r + 1) * half))
        out[sync] = (loss, {k: v.numpy().copy() for k, v in trainer.model.state_dict().items()})
        out["draw"] = int(trainer.rng.integers(1 << 40))  # each rank samples its own batches
    trainer = distributed.wrap(Trainer(step_config(), torch.device("cpu")))
    trainer.train_seconds = 100.0 * r  # the ranks' clocks differ: they agree on the slowest
    summary = fit(
        trainer,
        RingFeed(ring, mode="uniform"),
        None,
        Limits(steps=50),
        progress=False,
        stop=lambda: r == 1 and trainer.step_count >= 3,
    )
    out["fit"] = (summary.stopped, summary.step, trainer.train_seconds >= 100.0)
    asked = itertools.count()
    if r == 0:
        threading.Timer(1.0, lambda: empty.put(disc_sample(np.random.default_rng(0), 0))).start()
    summary = fit(
        trainer,
        RingFeed(empty, mode="uniform"),
        None,
        Limits(steps=50),
        progress=False,
        stop=lambda: r == 1 and next(asked) >= 1,
    )  # not at the first limit check: in the wait
    out["fit_waiting"] = (summary.stopped, summary.steps)
    distributed.shutdown()
    return out


def test_two_ranks_step_like_one_process_on_the_concatenated_batch():
    ring, empty = object_ring(), RingBuffer.create(BufferConfig(train_width=W, train_height=H, memory_mb=1))
    try:
        ranks = distributed.launch(2, _rank_step, ring, empty)
        single, loss = one_step(step_config(), ring, slice(0, N))
    finally:
        ring.close()
        empty.close()
    want = {k: v.numpy() for k, v in single.model.state_dict().items()}
    for r in (0, 1):
        got_loss, got = ranks[r][True]
        assert got.keys() == want.keys()
        worst = max(float(np.abs(got[k].astype(np.float64) - want[k]).max()) for k in want)
        assert worst <= ATOL, f"rank {r}: a weight differs by {worst:.2e} from the single-process step"
        assert got_loss == pytest.approx(loss, rel=1e-5)  # the logged loss: the mean over the ranks
    for k in want:  # both ranks hold the same weights and statistics
        np.testing.assert_array_equal(ranks[0][True][1][k], ranks[1][True][1][k])
    # per-rank batch norm normalises each half by its own statistics: a different step
    params = [k for k, _ in single.model.named_parameters()]
    per_rank = max(float(np.abs(ranks[0][False][1][k].astype(np.float64) - want[k]).max()) for k in params)
    assert per_rank > 100 * ATOL
    assert ranks[0]["draw"] != ranks[1]["draw"]
    # one rank's stop ends the loop on both after the same step (no rank left in an all-reduce)
    assert ranks[0]["fit"] == ranks[1]["fit"] == ("stop", 3, True)
    assert ranks[0]["fit_waiting"] == ranks[1]["fit_waiting"] == ("stop", 0)


TINY = """learner:
  model: {width: 8, blocks: [1, 1, 1, 1]}
  crops: {size: 64}
  train: {batch: 4, warmup_steps: 0, log_every: 1, device: cpu, cpu_precision: fp32}
  bootstrap: {every_steps: 10}
buffer: {train_width: 160, train_height: 120, memory_mb: 16}
"""


@pytest.mark.slow
def test_train_nproc_2_learns_resumes_and_exports(tmp_path, capfd):
    generate(tmp_path / "synth", seed=13, clips=1, frames=24, size=(160, 120))  # a clip that keeps frames
    (tmp_path / "tiny.yaml").write_text(TINY)
    clip, run = tmp_path / "synth" / "clip000.mp4", tmp_path / "run"
    args = ["train", str(clip), "--out", str(run), "--config", str(tmp_path / "tiny.yaml"), "--nproc", "2", "--quiet"]
    assert main(args + ["--steps", "16"]) == 0
    err = capfd.readouterr().err  # rank 0's summary (a child process: captured at the file descriptor)
    assert "motionmask train: 16 steps (run at step 16), 128 crops" in err and "on cpu x 2 ranks" in err, err[-2000:]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 16 and state["counters"]["crops_seen"] == 16 * 2 * 4  # steps x ranks x batch
    log = [json.loads(x) for x in (run / "train.jsonl").read_text().splitlines()]  # rank 0 alone writes it
    assert [x["step"] for x in log] == list(range(1, 17))
    losses = [x["loss"] for x in log]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, losses
    assert len((run / "bootstrap.jsonl").read_text().splitlines()) == 1  # rank 0 bootstrapped at step 10

    assert main(args + ["--steps", "20"]) == 0  # both ranks resume from step 16
    assert "motionmask train: 4 steps (run at step 20)" in capfd.readouterr().err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 20
    assert [json.loads(x)["step"] for x in (run / "train.jsonl").read_text().splitlines()][-5:] == [16, 17, 18, 19, 20]

    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(run / "checkpoints" / "last.pt"),
                "--out",
                str(tmp_path / "exports"),
                "--frames",
                str(clip),
            ]
        )
        == 0
    )  # onnx.checker, ONNX Runtime, parity with PyTorch, latency
    manifest = json.loads(next((tmp_path / "exports").glob("*/manifest.json")).read_text())
    assert manifest["source"]["step"] == 20 and manifest["parity"]


def test_train_nproc_user_errors(tmp_path, capsys):
    """Refused before any rank starts, in one line each."""
    (tmp_path / "heads.yaml").write_text("learner:\n  heads: {segments: {enabled: true}}\n")
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--nproc", "0"]) == 2
    assert "--nproc 0: must be >= 1" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "r"), "--nproc", "2"]) == 2
    assert "none.mp4: no such file or folder" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                str(tmp_path),
                "--out",
                str(tmp_path / "r"),
                "--nproc",
                "2",
                "--config",
                str(tmp_path / "heads.yaml"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "learner.heads segments" in err and "--nproc 1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
