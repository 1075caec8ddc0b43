"""Bootstrapping rounds (learner/bootstrap.py) and the ring buffer's relabelling API: the fusion
rules and their schedule, trimaps re-derived with the streamer's thresholds, a round changing the
labels that training then reads, a refined label never landing on a slot that took a new sample
(also against a real writer process), rounds inside fit() with a checkpoint at each, and the
offline `motionmask train` running rounds and logging them."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import numpy as np
import pytest
from _learner_data import make_ring, tiny_config

from learner.bootstrap import Bootstrapper, fuse, round_weight, slot_trimap, student_probs
from learner.checkpoint import load_checkpoint, step_files
from learner.config import BootstrapConfig
from learner.samples import RingFeed
from learner.train import Limits, Trainer, fit
from motionmask.cli import main
from streamer.config import TrimapConfig
from streamer.shm.ringbuffer import BufferConfig, RingBuffer, Sample, ring_bytes
from synth.things import generate

FORK = mp.get_context("fork")


def test_fusion_rules_and_weight_schedule():
    s = np.array([0.0, 0.25, 0.9, 1.0, 0.8], np.float32)
    m = np.array([1.0, 0.25, 0.6, 0.0, 0.8], np.float32)
    np.testing.assert_allclose(fuse(s, m, 0.3, "linear"), 0.3 * s + 0.7 * m, atol=1e-6)
    g = fuse(s, m, 0.5, "geometric")
    assert g[3] == pytest.approx(0.5, abs=1e-6)  # full disagreement: the log-odds cancel
    assert g[1] == pytest.approx(0.25, abs=1e-6) and g[4] == pytest.approx(0.8, abs=1e-6)  # agreement stays
    assert g[2] > 0.6 and g[2] < 0.9
    # w = 0 is the teacher, w = 1 the student (saturated values clipped to [0.01, 0.99] in log-odds)
    np.testing.assert_allclose(fuse(s, m, 1.0, "geometric"), np.clip(s, 0.01, 0.99), atol=1e-6)
    np.testing.assert_allclose(fuse(s, m, 0.0, "linear"), m)
    with pytest.raises(ValueError):
        fuse(s, m, 0.5, "median")
    cfg = BootstrapConfig(weight_start=0.3, weight_step=0.1, weight_max=0.6)
    assert [round_weight(cfg, r) for r in (1, 2, 3, 4, 9)] == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.6])


def test_round_schedule_and_resume_counter():
    b = Bootstrapper(BootstrapConfig(every_steps=10, start_step=25, max_rounds=3), TrimapConfig(), ring=None)
    assert [s for s in range(80) if b.round_at(s)] == [25, 35, 45]
    assert [b.round_at(s) for s in (25, 35, 45, 55)] == [1, 2, 3, 0]
    assert [b.rounds_before(s) for s in (0, 24, 25, 34, 35, 200)] == [0, 0, 1, 1, 2, 3]
    b = Bootstrapper(BootstrapConfig(every_steps=10), TrimapConfig(), ring=None)
    assert b.round_at(10) == 1 and b.round_at(20) == 2 and b.round_at(5) == 0 and b.round_at(0) == 0


def test_slot_trimap_uses_the_streamer_thresholds_and_pads_dont_care():
    prob = np.array([[0.0, 0.39999, 0.4, 0.7, 0.70001, 1.0]], np.float32)
    tri = slot_trimap(prob, (1, 2, 1, 6), (3, 9), TrimapConfig(negative_below=0.4, positive_above=0.7))
    assert tri[1, 2:8].tolist() == [0, 0, 128, 128, 255, 255]
    assert (tri[0] == 128).all() and (tri[2] == 128).all() and (tri[1, :2] == 128).all() and tri[1, 8] == 128
    tri = slot_trimap(prob, (0, 0, 1, 6), (1, 6), TrimapConfig(negative_below=0.1, positive_above=0.9))
    assert tri[0].tolist() == [0, 128, 128, 128, 128, 255]


def _ring(slots: int, w: int = 32, h: int = 24) -> RingBuffer:
    return RingBuffer.create(
        BufferConfig(train_width=w, train_height=h, per_shot_cap=slots, memory_mb=ring_bytes(h, w, slots) / 2**20)
    )


def _sample(value: int, w: int = 32, h: int = 24) -> Sample:
    return Sample(
        "cam",
        value,
        0,
        0.0,
        np.full((h, w, 3), value, np.uint8),
        np.zeros((h, w), np.uint8),
        np.zeros((h, w), np.uint8),
        None,
        (0, 0, h, w),
        (h, w),
    )


def test_update_labels_refuses_a_replaced_slot():
    with _ring(3) as ring:
        for v in (1, 2, 3):
            assert ring.put(_sample(v))
        old = ring.read(ring.ready_slots())
        assert sorted(old.frame_index.tolist()) == [1, 2, 3] and list(old.frame_index) == [3, 2, 1]  # newest first
        slots, seqs = old.slots.copy(), old.put_seq.copy()
        for v in (4, 5):  # evict the two oldest (frames 1 and 2)
            assert ring.put(_sample(v))
        label = np.full((24, 32), 255, np.uint8)
        done = [ring.update_labels(int(s), int(q), label) for s, q in zip(slots, seqs)]
        assert done == [True, False, False]  # only frame 3's slot still holds frame 3
        now = ring.read(ring.ready_slots())
        by_frame = {int(f): now.trimaps[k] for k, f in enumerate(now.frame_index)}
        assert (by_frame[3] == 255).all() and (by_frame[4] == 0).all() and (by_frame[5] == 0).all()
        st = ring.stats()
        assert st["relabels"] == 1 and st["relabel_refused"] == 2
        # training draws see the new label
        b = ring.sample(3, np.random.default_rng(0))
        for k, f in enumerate(b.frame_index):
            assert (b.trimaps[k] == (255 if f == 3 else 0)).all()
        with pytest.raises(ValueError):
            ring.update_labels(int(slots[0]), int(seqs[0]), np.zeros((24, 31), np.uint8))


def _hammer(name: str, seconds: float, go) -> None:
    ring = RingBuffer.attach(name)
    go.wait()
    end, v = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        v = v % 250 + 1
        ring.put(_sample(v))
    ring.close()


def test_relabels_race_a_real_writer_and_never_land_on_another_sample():
    """A writer process replaces samples as fast as it can while we read slots and write labels
    derived from what we read (label value = the image's value): any label on a replaced sample
    would carry another sample's value."""
    with _ring(4) as ring:
        go = FORK.Event()
        p = FORK.Process(target=_hammer, args=(ring.name, 1.5, go))
        p.start()
        go.set()
        ok = refused = 0
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            b = ring.read(ring.ready_slots())
            for k in range(len(b)):
                value = int(b.frames[k, 0, 0, 0])
                if ring.update_labels(int(b.slots[k]), int(b.put_seq[k]), np.full((24, 32), value, np.uint8)):
                    ok += 1
                else:
                    refused += 1
                # every copy a reader gets is whole: its label is untouched (0) or its own value
                assert set(np.unique(b.trimaps[k]).tolist()) <= {0, int(b.frames[k, 0, 0, 0])}
        p.join(10)
        assert p.exitcode == 0
        final = ring.read(ring.ready_slots())
        for k in range(len(final)):
            assert set(np.unique(final.trimaps[k]).tolist()) <= {0, int(final.frames[k, 0, 0, 0])}
        assert ok > 0 and ring.stats()["relabels"] == ok and ring.stats()["relabel_refused"] == refused


def test_a_round_changes_the_labels_training_reads_and_is_measured(tmp_path):
    cfg = tiny_config()
    ring = make_ring(12)
    try:
        trainer = Trainer(cfg)
        before = ring.read(ring.ready_slots())
        frames, probs, valid = before.frames.copy(), before.probs.copy(), before.valid.copy()
        gts = {int(f): before.probs[k] > 127 for k, f in enumerate(before.frame_index)}
        published = []
        bcfg = BootstrapConfig(every_steps=1, weight_start=0.5, weight_max=0.5, batch=5)
        # the paper's thresholds: 0.5 x 0.25 + 0.5 x 1 = 0.625 is "don't care" under them (not under the defaults)
        paper = TrimapConfig(negative_below=0.4, positive_above=0.7, near_positive=0.0)
        boot = Bootstrapper(
            bcfg, paper, ring, tmp_path, on_refined=published.append, ground_truth=lambda cam, i: gts.get(i)
        )
        st = boot.run_round(trainer.model, trainer.device, 7, 1)
        assert st.samples == 12 and st.refused == 0 and trainer.model.training  # the mode is restored
        # the labels are exactly the fused probabilities through the streamer's thresholds
        trainer.model.eval()
        students = student_probs(trainer.model, frames, valid, trainer.device)
        after = ring.read(ring.ready_slots())
        order = {int(f): k for k, f in enumerate(before.frame_index)}
        for k, f in enumerate(after.frame_index):
            j = order[int(f)]
            want = slot_trimap(fuse(students[j], probs[j] / 255.0, 0.5), valid[j], (72, 96), paper)
            np.testing.assert_array_equal(after.trimaps[k], want)
        # an untrained student (about 0.25 everywhere) at w = 0.5 turns the positives into "don't care"
        assert (after.trimaps == 128).sum() > (before.trimaps == 128).sum() and st.changed > 0
        drawn = ring.sample(12, np.random.default_rng(1))
        for k, f in enumerate(drawn.frame_index):
            np.testing.assert_array_equal(drawn.trimaps[k], after.trimaps[list(after.frame_index).index(f)])
        # measured against ground truth: the teacher here is exact, its labels all right
        assert st.gt_samples == 12 and st.quality["iou_motion"] == pytest.approx(1.0)
        assert st.quality["accuracy_motion"] == pytest.approx(1.0) and st.quality["accuracy_refined"] == pytest.approx(
            1.0
        )
        assert st.coverage_refined < st.coverage_motion
        assert sum(len(r.cameras) for r in published) == 12 and {r.step for r in published} == {7}
        assert published[0].refined[0].shape == (72, 96) and published[0].source_hw[0] == (72, 96)
        line = json.loads((tmp_path / "bootstrap.jsonl").read_text().splitlines()[0])
        assert line["round"] == 1 and line["samples"] == 12 and line["quality"]["iou_motion"] == pytest.approx(1.0)
        # the geometric rule lets a saturated teacher keep its positives against the same student
        boot.cfg.rule = "geometric"
        boot.run_round(trainer.model, trainer.device, 8, 1)
        assert (ring.read(ring.ready_slots()).trimaps == 255).sum() > 0
    finally:
        ring.close()


def test_rounds_inside_fit_checkpoint_the_model_that_made_them(tmp_path):
    cfg = tiny_config()
    cfg.checkpoint.every_steps = 0
    cfg.checkpoint.keep = 10
    cfg.bootstrap.every_steps = 3
    cfg.bootstrap.weight_step, cfg.bootstrap.weight_max = 0.1, 0.6
    ring = make_ring(16)
    try:
        trainer = Trainer(cfg)
        boot = Bootstrapper(cfg.bootstrap, TrimapConfig(), ring, tmp_path)
        summary = fit(trainer, RingFeed(ring), tmp_path, Limits(steps=7), progress=False, on_step=boot.on_step)
        assert summary.step == 7 and [h.step for h in boot.history] == [3, 6]
        assert [h.weight for h in boot.history] == pytest.approx([0.3, 0.4])
        assert [int(p.stem.split("_")[1]) for p in step_files(tmp_path)] == [3, 6, 7]  # rounds, then the end
        rounds = [json.loads(x) for x in (tmp_path / "bootstrap.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rounds] == [3, 6] and all(r["samples"] == 16 for r in rounds)
        assert ring.stats()["relabels"] == 32
        # a resumed run knows how many rounds it has been through
        state = load_checkpoint(tmp_path / "checkpoints" / "step_0000006.pt")
        assert Bootstrapper(cfg.bootstrap, TrimapConfig(), ring).rounds_before(int(state["step"])) == 2
    finally:
        ring.close()


TINY = """learner:
  model: {width: 8, blocks: [1, 1, 1, 1]}
  crops: {size: 64}
  train: {batch: 4, warmup_steps: 0, log_every: 1, device: cpu}
  checkpoint: {keep: 5}
  bootstrap: {every_steps: 3}
buffer: {train_width: 160, train_height: 120, memory_mb: 16}
streamer: {prune: {min_fg: 0.0, max_border_fg: 1.0, max_unsure: 1.0}}
"""


def test_offline_train_runs_rounds(tmp_path):
    generate(tmp_path / "synth", seed=13, clips=1, frames=24, size=(160, 120))  # a seed whose clip keeps frames
    (tmp_path / "tiny.yaml").write_text(TINY)
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            str(tmp_path / "synth" / "clip000.mp4"),
            "--out",
            str(run),
            "--config",
            str(tmp_path / "tiny.yaml"),
            "--steps",
            "6",
            "--quiet",
        ]
    )
    assert rc == 0
    rounds = [json.loads(x) for x in (run / "bootstrap.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rounds] == [3, 6] and all(r["samples"] > 0 for r in rounds)
    # synthetic clips carry ground truth: every round says how good its labels are
    assert all(r["gt_samples"] == r["samples"] and 0 <= r["quality"]["iou_refined"] <= 1 for r in rounds)
    assert all(r["quality"]["accuracy_motion"] > 0.5 for r in rounds)
    assert [int(p.stem.split("_")[1]) for p in step_files(run)] == [3, 6]
