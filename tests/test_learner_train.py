"""The training step and loop on the CPU with a tiny net and real samples in a real ring buffer:
the loss falls, NaN steps are skipped and a persistent NaN stops the run, checkpoints resume
exactly, only the newest N are kept, corrupt and incompatible checkpoints are one-line errors,
and a missing CUDA falls back to the CPU with a warning."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from _learner_data import make_ring, tiny_config

from common.errors import UserError
from learner import device as device_mod
from learner.checkpoint import find_resume, load_checkpoint, step_files
from learner.crops import make_crops
from learner.device import resolve_device, use_bf16
from learner.loss import masked_bce
from learner.samples import RingFeed
from learner.train import Limits, NonFiniteLoss, Trainer, fit


@pytest.fixture(scope="module")
def ring():
    r = make_ring(24)
    yield r
    r.close()


def fixed_loss(trainer: Trainer, ring) -> float:
    """Loss of the current weights on one fixed set of crops."""
    b = ring.sample(16, np.random.default_rng(123))
    frames, tri, valid = trainer.upload(b)
    g = torch.Generator()
    g.manual_seed(5)
    c = make_crops(frames, tri, valid, trainer.cfg.crops, trainer.crop_size, trainer.target_size, g)
    with torch.no_grad():
        trainer.model.eval()
        return masked_bce(trainer.model(trainer.model.normalize(c.images)), c.targets).item()


def test_training_steps_reduce_the_loss(ring, tmp_path):
    trainer = Trainer(tiny_config())
    before = fixed_loss(trainer, ring)
    s = fit(trainer, RingFeed(ring), tmp_path, Limits(steps=40), progress=False)
    after = fixed_loss(trainer, ring)
    assert s.steps == 40 and s.step == 40 and s.stopped == "steps" and s.crops == 40 * 8
    assert after < 0.6 * before, (before, after)
    lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 41))
    assert all({"step", "loss", "lr", "crops_per_s"} <= set(x) for x in lines)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()  # saved at the end


def test_nan_step_is_skipped_and_a_persistent_nan_stops(ring, caplog):
    trainer = Trainer(tiny_config(max_nan_steps=3))
    batch = ring.sample(8, np.random.default_rng(0))
    trainer.step(batch)
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    stats = [b.clone() for b in trainer._bn]
    good_mean = trainer.model.mean.clone()
    trainer.model.mean.fill_(float("nan"))  # poisons the input: loss and gradients are NaN
    r = trainer.step(batch)
    assert r.skipped and np.isnan(r.loss) and trainer.nan_skipped == 1 and trainer.step_count == 1
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.model.parameters()))  # no update
    assert all(torch.equal(a, b) for a, b in zip(stats, trainer._bn))  # batch-norm statistics kept
    assert "nan_step_skipped" in caplog.text
    trainer.model.mean.copy_(good_mean)
    r = trainer.step(batch)  # training goes on, and the streak starts over
    assert not r.skipped and trainer.step_count == 2 and trainer.nan_streak == 0
    trainer.model.mean.fill_(float("nan"))
    trainer.step(batch)
    trainer.step(batch)
    with pytest.raises(NonFiniteLoss, match="not finite for 3 steps in a row"):
        trainer.step(batch)
    assert trainer.nan_skipped == 4 and trainer.step_count == 2


def test_resume_continues_exactly(ring, tmp_path):
    """6 steps in one go == 3 steps, a checkpoint, a new process's worth of state, 3 more."""
    whole = Trainer(tiny_config())
    fit(whole, RingFeed(ring), tmp_path / "a", Limits(steps=6), progress=False)

    first = Trainer(tiny_config())
    s = fit(first, RingFeed(ring), tmp_path / "b", Limits(steps=6), progress=False, stop=lambda: first.step_count >= 3)
    assert s.stopped == "stop" and s.step == 3
    torch.manual_seed(999)  # a fresh process would start with other global RNG states
    np.random.seed(999)
    second = Trainer(tiny_config(seed=42))  # other seeds: everything must come from the checkpoint
    path, state = find_resume(tmp_path / "b")
    assert path.name == "last.pt" and state["step"] == 3
    second.load_state_dict(state, path)
    fit(second, RingFeed(ring), tmp_path / "b", Limits(steps=6), progress=False)

    losses = [[json.loads(x)["loss"] for x in (tmp_path / d / "train.jsonl").read_text().splitlines()] for d in "ab"]
    assert losses[0] == losses[1]  # the log of b continues after the resume
    assert second.step_count == 6 and whole.step_count == 6
    for a, b in zip(whole.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert whole.opt.state_dict()["state"][0]["step"] == second.opt.state_dict()["state"][0]["step"]


def test_checkpoints_schedule_keep_last_n_and_last_pt(ring, tmp_path):
    cfg = tiny_config()
    cfg.checkpoint.every_steps = 2
    cfg.checkpoint.keep = 2
    trainer = Trainer(cfg)
    fit(trainer, RingFeed(ring), tmp_path, Limits(steps=7), progress=False)
    files = step_files(tmp_path)
    assert [p.name for p in files] == ["step_0000006.pt", "step_0000007.pt"]  # saved 2, 4, 6 and at the end
    last = tmp_path / "checkpoints" / "last.pt"
    assert os.path.samefile(last, files[-1])
    state = load_checkpoint(last)
    assert state["step"] == 7 and state["arch"] == trainer.arch
    assert {"python", "numpy", "torch", "cuda", "crops"} <= set(state["rng"])
    assert state["config"]["model"]["width"] == 8 and state["slot_size"] == [72, 96]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_corrupt_and_incompatible_checkpoints(ring, tmp_path):
    trainer = Trainer(tiny_config())
    trainer.cfg.checkpoint.every_steps = 2
    fit(trainer, RingFeed(ring), tmp_path, Limits(steps=4), progress=False)
    d = tmp_path / "checkpoints"
    good = d / "step_0000004.pt"
    # a truncated file: one line naming it
    cut = d / "cut.pt"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"cut\.pt: not a readable checkpoint \(truncated or corrupt"):
        load_checkpoint(cut)
    (d / "text.pt").write_text("hello")
    with pytest.raises(UserError, match=r"text\.pt: not a readable checkpoint"):
        load_checkpoint(d / "text.pt")
    torch.save({"x": logging.getLogger("x")}, d / "code.pt")  # needs code to unpickle: refused
    with pytest.raises(UserError, match=r"code\.pt: refused"):
        load_checkpoint(d / "code.pt")
    torch.save({"weights": torch.zeros(3)}, d / "foreign.pt")
    with pytest.raises(UserError, match="not a motionmask learner checkpoint"):
        load_checkpoint(d / "foreign.pt")
    # last.pt torn (replaced by garbage): resume falls back to the newest step file that loads
    (d / "last.pt").unlink()
    (d / "last.pt").write_bytes(b"PK\x03\x04 torn")
    path, state = find_resume(tmp_path)
    assert path == good and state["step"] == 4
    # another width: the error names the file and what differs
    wider = tiny_config()
    wider.model.width = 16
    with pytest.raises(
        UserError, match=r"step_0000004\.pt: incompatible checkpoint: .*width 8 in the checkpoint vs 16"
    ):
        Trainer(wider).load_state_dict(state, path)
    alex = tiny_config()
    alex.model.backbone = "alexnet"
    alex.crops.size = 67
    with pytest.raises(UserError, match="backbone 'compact' in the checkpoint vs 'alexnet'"):
        Trainer(alex).load_state_dict(state, path)
    for p in d.iterdir():
        p.write_bytes(b"junk")
    with pytest.raises(UserError, match="no readable checkpoint"):
        find_resume(tmp_path)
    assert find_resume(tmp_path / "elsewhere") is None


def test_cpu_precision_bf16_trains_and_auto_follows_the_cpu(ring, monkeypatch):
    """bf16 autocast on the CPU (learner.train.cpu_precision): the loss falls as in float32, and
    auto picks bf16 exactly when the CPU reports native bf16."""
    trainer = Trainer(tiny_config(cpu_precision="bf16"))
    assert trainer.bf16 and trainer.channels_last and trainer.precision == "bf16"
    assert next(trainer.model.parameters()).dtype == torch.float32  # autocast: the weights stay float32
    before = fixed_loss(trainer, ring)
    s = fit(trainer, RingFeed(ring), None, Limits(steps=40), progress=False)
    assert s.nan_skipped == 0 and fixed_loss(trainer, ring) < 0.6 * before
    fp32 = Trainer(tiny_config(cpu_precision="fp32"))
    assert not fp32.bf16 and not fp32.channels_last and fp32.precision == "fp32"
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda native=native: native)
        assert use_bf16(cpu, "auto") is native
        assert use_bf16(cpu, "bf16") and not use_bf16(cpu, "fp32")
    cfg = tiny_config(cpu_precision="half")
    with pytest.raises(ValueError, match="learner.train.cpu_precision"):
        cfg.validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_falls_back_with_one_warning_or_fails_when_strict(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_device("cuda", strict=False).type == "cpu"
    lines = [r for r in caplog.records if "device_fallback" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda", strict=True)
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    cfg = tiny_config(device="cuda", strict_device=True)
    with pytest.raises(UserError, match="strict_device"):
        Trainer(cfg)


def test_thread_trial_reverts_when_slower_and_retries_later(caplog):
    """Offline CPU training tries all cores once the streamer is done; a slower trial reverts and
    is tried again RETRY_STEPS later (driven here with step times, not the clock)."""
    from types import SimpleNamespace

    from learner.device import ThreadTrial

    threads = torch.get_num_threads()
    trainer = SimpleNamespace(step_count=0, train_seconds=0.0)
    feed = SimpleNamespace(finished=lambda: True)

    def run(trial, steps, seconds_per_step):
        for _ in range(steps):
            trainer.step_count += 1
            trainer.train_seconds += seconds_per_step
            trial = trial.check(trainer, feed)
            if trial is None:
                break
        return trial

    try:
        with caplog.at_level(logging.INFO):
            trial = run(ThreadTrial(), 25, 0.1)  # the baseline: 25 steps at 0.1 s
            assert trial is not None and trial.before == pytest.approx(0.1)
            retry = run(trial, 1, 0.5)  # all cores 5x slower: one step ends the trial; retried later
            assert isinstance(retry, ThreadTrial) and retry is not trial
            assert retry.not_before == trainer.step_count + ThreadTrial.RETRY_STEPS
            assert torch.get_num_threads() == trial.old
            assert run(retry, ThreadTrial.RETRY_STEPS, 0.5) is retry  # waits, times nothing
            assert retry.before is None
            assert run(retry, 50, 0.1) is retry and retry.before == pytest.approx(0.1)  # 25 fresh steps
            assert run(retry, 5, 0.05) is None  # faster now: kept for good
        lines = [r.getMessage() for r in caplog.records if "train_threads" in r.getMessage()]
        assert len(lines) == 2 and "retry_at_step" in lines[0]
    finally:
        torch.set_num_threads(threads)
