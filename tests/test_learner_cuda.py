"""The CUDA path of the learner (skipped without a GPU): bf16 autocast, channels_last, pinned
asynchronous uploads, NaN skipping, checkpoints that resume on CUDA and on the CPU, the
predictor, and torch.compile."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from _learner_data import make_ring, tiny_config

from learner.checkpoint import find_resume
from learner.predict import Predictor
from learner.samples import RingFeed
from learner.train import Limits, Trainer, fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def ring():
    r = make_ring(32)
    yield r
    r.close()


def cuda_config(device: str = "cuda", **train):
    cfg = tiny_config(device=device, **train)
    cfg.model.width = 16
    cfg.train.batch = 32
    return cfg


def test_cuda_training_runs_in_bf16_channels_last_and_learns(ring, tmp_path):
    trainer = Trainer(cuda_config())
    assert trainer.device.type == "cuda" and trainer.channels_last
    assert trainer.model.stem[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    s = fit(trainer, RingFeed(ring), tmp_path, Limits(steps=60), progress=False)
    assert s.steps == 60 and np.isfinite(s.last_loss) and s.last_loss < 0.75 * s.first_loss, s
    # convolutions in bf16 (the final bilinear upsampling runs in float32 under autocast), float32 weights
    x = trainer.model.normalize(torch.zeros(2, 3, 64, 64, device="cuda")).contiguous(memory_format=torch.channels_last)
    trainer.model.eval()  # train mode would move the batch-norm statistics compared below
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert all(f.dtype == torch.bfloat16 for f in trainer.model.features(x))
    assert next(trainer.model.parameters()).dtype == torch.float32
    # resume on CUDA: everything restored, the crop generator included
    path, state = find_resume(tmp_path)
    again = Trainer(cuda_config())
    again.load_state_dict(state, path)
    assert again.step_count == 60 and torch.equal(again.gen.get_state(), trainer.gen.get_state())
    for a, b in zip(again.model.state_dict().values(), trainer.model.state_dict().values()):
        assert torch.equal(a, b)
    fit(again, RingFeed(ring), tmp_path, Limits(steps=65), progress=False)
    assert again.step_count == 65


def test_cuda_checkpoint_resumes_on_cpu_and_predicts(ring, tmp_path, caplog):
    trainer = Trainer(cuda_config())
    fit(trainer, RingFeed(ring), tmp_path, Limits(steps=5), progress=False)
    path, state = find_resume(tmp_path, "cpu")
    cpu = Trainer(cuda_config(device="cpu"))
    with caplog.at_level(logging.INFO):
        cpu.load_state_dict(state, path)
    assert cpu.step_count == 5 and "crop_rng_reseeded" in caplog.text
    fit(cpu, RingFeed(ring), None, Limits(steps=6), progress=False)
    img = ring.sample(1, np.random.default_rng(0)).frames[0]
    p_gpu = Predictor(path, "cuda")(img)
    p_cpu = Predictor(path, "cpu")(img)
    assert p_gpu.shape == img.shape[:2] and np.abs(p_gpu - p_cpu).max() < 0.05  # bf16 vs float32


def test_cuda_nan_step_is_skipped(ring):
    trainer = Trainer(cuda_config())
    batch = ring.sample(8, np.random.default_rng(0))
    trainer.step(batch)
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.model.mean.fill_(float("nan"))
    r = trainer.step(batch)
    assert r.skipped and trainer.nan_skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.model.parameters()))


def test_cuda_compiled_model_trains(ring, tmp_path):
    trainer = Trainer(cuda_config(compile=True))
    s = fit(trainer, RingFeed(ring), tmp_path, Limits(steps=8), progress=False)
    assert s.steps == 8 and np.isfinite(s.last_loss)
    state = find_resume(tmp_path)[1]
    assert not any(k.startswith("_orig_mod") for k in state["model"])  # plain weights, loadable anywhere
