"""A multitask checkpoint (mask, embedding, segments: trained a few steps on real frames) exports
as one ONNX model with a named output per head: the manifest and the model's metadata list the
heads, verification checks parity of every output, ONNX Runtime returns all of them at batch 1
and 8 matching PyTorch, and `motionmask predict --model` still writes masks."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from _export_data import SAMPLE, sample_frames
from _heads_data import GTPairFeed, render, streamed_ring
from _learner_data import tiny_config

from common.errors import UserError
from exporter.export import load_for_export, torch_outputs
from exporter.runtime import BundleRunner, fit_frame
from learner.samples import RingFeed
from learner.train import Limits, Trainer, fit
from motionmask.cli import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    base = tmp_path_factory.mktemp("heads-export")
    clips = [render(s) for s in (1, 2)]
    ring = streamed_ring(clips)
    try:
        cfg = tiny_config()
        h = cfg.heads
        h.embedding.enabled = h.segments.enabled = True
        h.embedding.dim, h.embedding.hidden, h.embedding.pairs = 16, 32, 8
        h.segments.count, h.segments.loss_size = 4, 32
        fit(Trainer(cfg), RingFeed(ring), base / "run", Limits(steps=6), progress=False, pairs=GTPairFeed(clips))
    finally:
        ring.close()
    ckpt = base / "run" / "checkpoints" / "last.pt"
    rc = main(["export", "--checkpoint", str(ckpt), "--out", str(base / "exports"), "--frames", str(SAMPLE), "--quiet"])
    assert rc == 0
    return ckpt, base / "exports"


def test_every_head_is_a_named_verified_output(bundle):
    ckpt, exports = bundle
    runner = BundleRunner(exports, provider="cpu")
    m = runner.manifest
    assert m["heads"] == ["mask", "embedding", "segments"] == runner.outputs
    h, w = m["input"]["height"], m["input"]["width"]  # the slot it trained at: 128 x 96
    shapes = {o["name"]: o["shape"] for o in m["outputs"]}
    assert shapes == {"mask": ["N", h, w], "embedding": ["N", 16], "segments": ["N", 4, h, w]}
    assert set(m["parity"]["per_output"]) == {"mask", "embedding", "segments"}
    assert all(v <= 1e-4 for v in m["parity"]["per_output"].values())
    props = {p.key: p.value for p in onnx.load(str(runner.path / "model.onnx")).metadata_props}
    assert json.loads(props["heads"]) == ["mask", "embedding", "segments"]


@pytest.mark.parametrize("n", [1, 8])
def test_onnx_runtime_returns_every_output_matching_pytorch(bundle, n):
    ckpt, exports = bundle
    runner = BundleRunner(exports, provider="cpu", precision="fp32")
    model, _ = load_for_export(ckpt)
    model.eval()
    w, h = runner.width, runner.height
    x = np.stack([fit_frame(f, w, h, runner.resize, runner.box)[0] for f in sample_frames(n)])
    got = runner.run(x)
    want = dict(zip(["mask", "embedding", "segments"], torch_outputs(model, ["mask", "embedding", "segments"], x)))
    for name in want:
        assert got[name].shape == want[name].shape
        assert np.abs(got[name] - want[name]).max() <= 1e-4, name
    assert np.allclose(np.linalg.norm(got["embedding"], axis=1), 1, atol=1e-5)
    assert np.allclose(got["segments"].sum(1), 1, atol=1e-5)


def test_per_frame_outputs_at_each_frames_size(bundle):
    _, exports = bundle
    runner = BundleRunner(exports, provider="cpu")
    frames = sample_frames(2)  # 384 x 288, larger than the bundle's input
    out = runner.predict_all(frames)
    assert out["mask"][0].shape == (288, 384) and out["segments"][1].shape == (4, 288, 384)
    assert out["embedding"][0].shape == (16,)
    assert np.allclose(runner.predict(frames[:1], "segments")[0], out["segments"][0], atol=1e-6)
    with pytest.raises(UserError, match="no output 'depth'"):
        runner.predict(frames, "depth")


def test_predict_with_a_multitask_bundle_writes_masks(bundle, tmp_path, capsys):
    _, exports = bundle
    rc = main(
        ["predict", "--model", str(exports), str(SAMPLE), "--out", str(tmp_path / "pred"), "--frames", "3", "--quiet"]
    )
    assert rc == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 3  # one mask per frame
