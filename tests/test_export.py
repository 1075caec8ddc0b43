"""The exporter on the CPU with a real (tiny, trained) checkpoint: the bundle is one self-contained
ONNX file described by its manifest and its metadata, ONNX Runtime matches PyTorch at batch 1 and 8
on real frames, a model that fails a check is never published, and every bad input (a foreign or
mismatched checkpoint, an unwritable or full exports folder, a bad size) is one line, exit 2,
with the previous bundle still in service."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from _export_data import SAMPLE, copy_version, exported, sample_frames, trained_checkpoint

from exporter.bundle import PREVIOUS, read_pointer, sha256_file, versions
from exporter.config import ExportConfig
from exporter.export import export_checkpoint, load_for_export, torch_outputs
from exporter.runtime import BundleRunner, fit_frame
from exporter.verify import ExportRejected, verify_onnx
from learner.config import ModelConfig
from learner.model import build_model
from learner.predict import Predictor
from motionmask.cli import main

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return exported(tmp_path_factory)


def one_error_line(err: str, *needles: str) -> str:
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if "error" in x.lower()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_bundle_is_one_self_contained_described_onnx_file(exports):
    v1, v2 = versions(exports)
    assert read_pointer(exports) == v2 and read_pointer(exports, PREVIOUS) == v1
    assert not [p.name for p in exports.iterdir() if p.name.startswith(".")]
    for v, (w, h), box in ((v1, (96, 96), [96, 72]), (v2, (128, 96), [128, 96])):
        d = exports / v
        # no .onnx.data; the 8-bit model beside the fp32 one (tests/test_int8.py)
        assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "model.int8.onnx", "model.onnx"]
        m = json.loads((d / "manifest.json").read_text())
        assert m["version"] == v and m["format"] == "motionmask-bundle"
        assert m["sha256"] == m["files"]["model.onnx"]["sha256"] == sha256_file(d / "model.onnx")
        assert m["files"]["model.onnx"]["bytes"] == (d / "model.onnx").stat().st_size
        assert m["input"] == {
            "name": "image",
            "dtype": "uint8",
            "shape": ["N", h, w, 3],
            "layout": "NHWC",
            "color": "RGB",
            "height": h,
            "width": w,
        }
        assert [(o["name"], o["dtype"], o["shape"]) for o in m["outputs"]] == [("mask", "float32", ["N", h, w])]
        assert m["heads"] == ["mask"] and m["opset"] == 18
        pre = m["preprocessing"]
        assert pre["fit_box"] == box and pre["resize"] == "fit" and pre["mean"] == [0.485, 0.456, 0.406]
        assert m["source"]["step"] == 25 and m["source"]["arch"]["backbone"] == "compact"
        assert m["source"]["checkpoint"].endswith("last.pt")
        assert m["parity"]["max_abs_diff"] <= 1e-4 and m["parity"]["batches"] == [1, 8]
        assert m["parity"]["frames"] == 8 and m["parity"]["tolerance"] == 1e-4
        assert 0 < m["latency"]["ms_median"] < 1000 and m["latency"]["threads"] == 1
        assert m["created"].endswith("Z") and m["timings_s"]["export"] > 0

        model = onnx.load(str(d / "model.onnx"), load_external_data=False)
        onnx.checker.check_model(model, full_check=True)
        assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
        assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [("", 18)]
        props = {p.key: json.loads(p.value) for p in model.metadata_props}
        assert props["version"] == v and props["heads"] == ["mask"]
        assert props["input"]["shape"] == ["N", h, w, 3] and props["source"]["step"] == 25
        (inp,), (out,) = model.graph.input, model.graph.output
        assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [h, w, 3]  # dynamic batch
        assert out.name == "mask" and out.type.tensor_type.shape.dim[0].dim_param == dims[0].dim_param


def test_onnx_runtime_matches_pytorch_at_batch_1_and_8_on_real_frames(exports, ckpt):
    v2 = versions(exports)[1]
    model, _ = load_for_export(ckpt)
    model.eval()
    runner = BundleRunner(exports / v2, provider="cpu", threads=1, precision="fp32")
    x = np.stack([fit_frame(f, 128, 96)[0] for f in sample_frames(8)])
    with torch.no_grad():  # the learner's own forward (MaskNet.forward), not the export wrapper
        want = torch.sigmoid(model(model.normalize(torch.from_numpy(x).permute(0, 3, 1, 2))))[:, 0].numpy()
    assert want.std() > 1e-3  # a trained net: the outputs vary over the frame
    batch8 = runner.run(x)["mask"]
    singles = np.concatenate([runner.run(x[i : i + 1])["mask"] for i in range(8)])
    batch3 = runner.run(x[2:5])["mask"]
    assert batch8.shape == (8, 96, 128) and batch8.dtype == np.float32
    assert np.abs(batch8 - want).max() <= 1e-4
    assert np.abs(singles - want).max() <= 1e-4
    assert np.abs(batch3 - want[2:5]).max() <= 1e-4
    assert 0 <= batch8.min() and batch8.max() <= 1  # sigmoid inside: probabilities


def test_bundle_runs_frames_as_the_learners_predictor_does(exports, ckpt):
    """The auto-sized bundle fits frames into the box the net trained at, pads to the stride and
    cuts back, as learner.predict.Predictor does; any frame size comes back at its own size."""
    v1 = versions(exports)[0]
    runner = BundleRunner(exports / v1, provider="cpu", precision="fp32")
    predictor = Predictor(ckpt, "cpu")
    for f in sample_frames(3):
        small = cv2.resize(f, (96, 72), interpolation=cv2.INTER_AREA)
        assert np.abs(runner(small) - predictor(small)).max() <= 1e-4
        full_r, full_p = runner(f), predictor(f)  # 384 x 288: same net input, resized back
        assert full_r.shape == f.shape[:2]
        assert np.abs(full_r - full_p).mean() < 2e-3
    odd = np.ascontiguousarray(sample_frames(1)[0][:200, :111])  # another aspect ratio: padded, cut back
    assert runner(odd).shape == (200, 111)


def test_a_model_that_fails_a_check_is_never_published(exports, ckpt, tmp_path, caplog):
    v1, v2 = versions(exports)
    out = tmp_path / "exports"
    copy_version(exports, v1, out)
    caplog.set_level(logging.INFO)
    with pytest.raises(ExportRejected) as e:  # a latency budget no model meets
        export_checkpoint(ckpt, out, ExportConfig(max_latency_ms=1e-6))
    assert e.value.check == "latency" and "export.max_latency_ms" in str(e.value)
    assert versions(out) == [v1] and read_pointer(out) == v1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert any("event=export_rejected" in r.message and "check=latency" in r.message for r in caplog.records)

    good = (exports / v2 / "model.onnx").read_bytes()
    x = np.stack([fit_frame(f, 128, 96)[0] for f in sample_frames(4)])
    model, _ = load_for_export(ckpt)
    model.eval()
    ref = lambda imgs: torch_outputs(model, ["mask"], imgs)  # noqa: E731
    cfg = ExportConfig()
    assert verify_onnx(good, ["mask"], x, ref, cfg).parity["max_abs_diff"] <= 1e-4
    with pytest.raises(ExportRejected) as e:  # a damaged file
        verify_onnx(good[: len(good) // 2], ["mask"], x, ref, cfg)
    assert e.value.check == "onnx_checker"
    other = build_model(ModelConfig(width=8, blocks=[1, 1, 1, 1]), 64).eval()  # same shape, other weights
    with pytest.raises(ExportRejected) as e:
        verify_onnx(good, ["mask"], x, lambda imgs: torch_outputs(other, ["mask"], imgs), cfg)
    assert e.value.check == "parity" and "max |onnxruntime - pytorch|" in str(e.value)


def test_foreign_and_mismatched_checkpoints_are_one_line(ckpt, tmp_path, capsys):
    out = tmp_path / "exports"
    state = torch.load(ckpt, weights_only=True)

    def variant(name: str, **changes) -> Path:
        s = dict(state, **changes)
        torch.save(s, tmp_path / name)
        return tmp_path / name

    wider = build_model(ModelConfig(width=16, blocks=[1, 1, 1, 1]), 64).state_dict()
    cases = [
        (variant("wider.pt", model=wider), "wider.pt: checkpoint from another architecture: its weights do not fit"),
        (
            variant("arch.pt", arch={**state["arch"], "backbone": "alexnet"}),
            "arch.pt: checkpoint from another architecture",
        ),
        (
            variant("future.pt", config={**state["config"], "model": {**state["config"]["model"], "backbone": "vit"}}),
            "backbone 'vit' is not one this motionmask knows",
        ),
    ]
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases.append((tmp_path / "junk.pt", "junk.pt: not a readable checkpoint"))
    for path, needle in cases:
        assert main(["export", "--checkpoint", str(path), "--out", str(out), "--quiet"]) == 2
        one_error_line(capsys.readouterr().err, needle)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--size", "100x100", "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "multiples of 32")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--size", "big"]) == 2
    one_error_line(capsys.readouterr().err, "--size 'big'")
    assert main(["export", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "nothing to do")
    assert versions(out) == [] and read_pointer(out) is None
    (tmp_path / "file").write_text("x")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "file")]) == 2
    one_error_line(capsys.readouterr().err, "is a file, not a folder")


def in_private_mounts(script: str) -> subprocess.CompletedProcess:
    """A shell script in a user + mount namespace: its read-only or tiny mounts vanish with it."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("user namespaces (unshare -rm) are not available here")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=90)


def test_unwritable_exports_folder_fails_at_once(ckpt, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    proc = in_private_mounts(
        f"mount --bind -o ro {ro} {ro} && {PY} -m motionmask.cli export --checkpoint {ckpt} --out {ro / 'exports'}"
    )
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr, str(ro / "exports"), "not writable")


def test_full_disk_publishes_nothing_and_keeps_the_bundle_in_service(exports, ckpt, tmp_path):
    v1 = versions(exports)[0]
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = mnt / "exports"
    # a private 1 MiB tmpfs holding one good bundle (0.4 MB): the next one does not fit
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {mnt} && mkdir {out} && cp -r {exports / v1} {out}/ && "
        f"echo {v1} > {out}/LATEST && {PY} -m motionmask.cli export --checkpoint {ckpt} --out {out} --quiet "
        f"--frames {SAMPLE}; rc=$?; ls -A {out} > {tmp_path / 'ls'}; cat {out}/LATEST > {tmp_path / 'latest'}; "
        f"exit $rc"
    )
    proc = in_private_mounts(script)
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr, "no space left", f"LATEST still names {v1}")
    assert (tmp_path / "ls").read_text().split() == sorted([v1, "LATEST"])
    assert (tmp_path / "latest").read_text().strip() == v1


def test_the_export_gate_ranks_by_holdout_iou_and_breaks_ties_by_bce():
    """A sure student that disagrees with a few teacher pixels has a higher masked BCE than a timid
    one, yet marks the objects better: the gate must prefer it (README, "Which model the daemon ships")."""
    from exporter.export import Holdout, beats, holdout_score

    tri = np.zeros((1, 8, 8), np.uint8)
    tri[0, 2:6, 2:6] = 255
    holdout = Holdout(np.zeros((1, 8, 8, 3), np.uint8), tri)

    class Fixed(torch.nn.Module):  # a "model" whose mask head gives these probabilities
        def __init__(self, prob):
            super().__init__()
            logits = torch.logit(torch.tensor(prob, dtype=torch.float32)[None, None])
            self.heads = torch.nn.ModuleDict({"mask": torch.nn.Identity()})
            self.normalize = lambda x: x
            self.features = lambda x: logits.expand(x.shape[0], 1, 8, 8)

    sure = np.where(tri[0] == 255, 0.999, 0.001)
    sure[2, 2:5] = 1e-6  # three labelled pixels it is sure of otherwise (the teacher's mistakes, say)
    timid = np.where(tri[0] == 255, 0.6, 0.4)
    timid[2:6, 2] = 0.4  # a whole column of the object missed, timidly
    s_sure, s_timid = holdout_score(Fixed(sure), holdout), holdout_score(Fixed(timid), holdout)
    assert s_sure["holdout_bce"] > s_timid["holdout_bce"] and s_sure["holdout_iou"] > s_timid["holdout_iou"]
    assert beats(s_sure, s_timid) and not beats(s_timid, s_sure)
    assert beats({"holdout_iou": 1.0, "holdout_bce": 0.1}, {"holdout_iou": 1.0, "holdout_bce": 0.2})
    assert not beats(s_sure, s_sure)


def test_periodic_export_publishes_only_a_model_that_beats_the_last_one(tmp_path, caplog):
    """The daemon's policy: due every N steps or M minutes; exported only when better on the
    held-back buffer samples than the last export; a failure is logged, never raised."""
    from _learner_data import make_ring, object_sample, tiny_config

    from exporter.export import Holdout, PeriodicExport
    from learner.samples import RingFeed
    from learner.train import Limits, Trainer, fit

    rng = np.random.default_rng(7)
    trainer = Trainer(tiny_config())  # untrained
    samples = [object_sample(rng, 96, 72, i) for i in range(12)]
    holdout = Holdout.for_model(samples, trainer.model, ExportConfig(), slot_size=(72, 96))
    assert holdout.images.shape == (12, 96, 96, 3) and (holdout.trimaps[:, 72:] == 128).all()
    assert (holdout.images[:, :72] == np.stack([s.image for s in samples])).all()
    now, published = [0.0], []
    out = tmp_path / "exports"
    periodic = PeriodicExport(
        out,
        ExportConfig(every_steps=10, every_minutes=1.0),
        holdout,
        slot_size=(72, 96),
        source={"run": "test"},
        on_publish=published.append,
        clock=lambda: now[0],
    )
    caplog.set_level(logging.INFO)
    assert periodic.maybe_export(trainer.model, 5) is None and not versions(out)  # not due yet
    first = periodic.maybe_export(trainer.model, 10)  # nothing to beat yet
    assert first is not None and first.manifest["source"]["run"] == "test"
    q1 = first.manifest["quality"]
    assert q1["holdout_samples"] == 12 and q1["holdout_bce"] > 0 and 0 <= q1["holdout_iou"] <= 1
    assert periodic.maybe_export(trainer.model, 20) is None  # due, but no better
    assert any("event=export_skipped" in r.message and "reason=not_better" in r.message for r in caplog.records)
    assert not periodic.due(21)
    now[0] = 61.0
    assert periodic.due(21)  # a minute later, whatever the step
    ring = make_ring(24)
    try:
        fit(trainer, RingFeed(ring), tmp_path / "run", Limits(steps=40), progress=False)
    finally:
        ring.close()
    second = periodic.maybe_export(trainer.model, 40)
    assert second is not None and second.manifest["quality"]["holdout_iou"] > q1["holdout_iou"]
    assert second.manifest["quality"]["last_export_holdout_iou"] == pytest.approx(q1["holdout_iou"])
    assert second.manifest["quality"]["last_export_holdout_bce"] == pytest.approx(q1["holdout_bce"])
    assert published == [first, second] and read_pointer(out) == second.version
    # an export that cannot be published: logged, returned as None, training goes on
    periodic.cfg.max_latency_ms = 1e-6
    periodic.last_model = build_model(ModelConfig(width=8, blocks=[1, 1, 1, 1]), 64)  # a worse last export
    assert periodic.maybe_export(trainer.model, 50) is None and "export rejected at latency" in periodic.last_error
    assert read_pointer(out) == second.version and len(versions(out)) == 2
    # every decision is in the gate's record (the daemon's status, the web console), with why
    summary = periodic.summary()
    assert (summary["shipped"], summary["skipped"], summary["failed"]) == (2, 1, 1)
    d = summary["decisions"]
    assert [(x["step"], x["outcome"], x["version"]) for x in d] == [
        (10, "shipped", first.version),
        (20, "skipped", None),
        (40, "shipped", second.version),
        (50, "failed", None),
    ]
    assert d[0]["reason"] == "first export of this run" and d[0]["last_export_holdout_iou"] is None
    assert d[1]["reason"].startswith("holdout IoU equal") and "not below the last export's" in d[1]["reason"]
    assert (
        f"{second.manifest['quality']['holdout_iou']:.4f} beats the last export's {q1['holdout_iou']:.4f}"
        in d[2]["reason"]
    )
    assert d[3]["reason"].startswith("rejected by the latency check: ")
