"""The bundle's 8-bit model (exporter/quantize.py) on a real trained checkpoint: it ships beside the
fp32 one with its sha256, its agreement and its latency in the manifest; ONNX Runtime on a CPU
loads it by default and its masks say what the fp32 model's say; a bundle without one runs in fp32
under auto and is refused, in one line, under int8; an 8-bit model that fails its check or cannot
be made leaves the fp32 bundle shipping; a device pulls and smoke-tests both models."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import onnx
import pytest
from _export_data import SAMPLE, exported, sample_frames, trained_checkpoint

from common.errors import UserError
from exporter.bundle import INT8_FILE, MODEL_FILE, load_bundle, read_pointer, sha256_file
from exporter.config import ExportConfig
from exporter.export import export_checkpoint, with_int8
from exporter.quantize import agreement, refusal
from exporter.runtime import BundleRunner
from motionmask.cli import main


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return exported(tmp_path_factory)


def test_the_bundle_ships_a_checked_8_bit_model_that_cpu_runners_load(exports):
    d = exports / read_pointer(exports)
    m = json.loads((d / "manifest.json").read_text())
    assert m["files"][INT8_FILE]["sha256"] == sha256_file(d / INT8_FILE)
    assert (d / INT8_FILE).stat().st_size < (d / MODEL_FILE).stat().st_size / 2  # 8-bit weights
    q = m["int8"]
    assert q["file"] == INT8_FILE and q["calibration_frames"] == 8 and q["min_mask_iou"] == 0.9
    assert q["agreement"]["mask_iou"] >= 0.9 and q["agreement"]["mask_mean_abs_diff"] < 0.05
    assert 0 < q["latency"]["ms_median"] < 1000 and q["latency"]["threads"] == 1
    graph = onnx.load(str(d / INT8_FILE))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ: a real quantized graph
    assert graph.graph.input[0].name == "image" and [o.name for o in graph.graph.output] == ["mask"]

    auto, fp32 = BundleRunner(exports, provider="cpu"), BundleRunner(exports, provider="cpu", precision="fp32")
    assert auto.precision == "int8" and fp32.precision == "fp32" and auto.version == fp32.version
    frames = sample_frames(6)
    a, b = auto.predict(frames), fp32.predict(frames)
    fa, fb = np.stack(a) >= 0.5, np.stack(b) >= 0.5
    assert fa.shape == fb.shape == (6, 288, 384)
    assert (fa & fb).sum() / max(1, (fa | fb).sum()) >= 0.9 or (fa == fb).mean() > 0.995
    assert np.abs(np.stack(a) - np.stack(b)).mean() < 0.05


def test_a_bundle_without_the_8_bit_model_runs_in_fp32_and_refuses_int8(tmp_path, tmp_path_factory, capsys):
    ckpt = trained_checkpoint(tmp_path_factory)
    out = tmp_path / "exports"
    rc = main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--no-int8", "--quiet"])
    assert rc == 0 and "8-bit" not in capsys.readouterr().err
    d = out / read_pointer(out)
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", MODEL_FILE]
    assert "int8" not in json.loads((d / "manifest.json").read_text())
    assert BundleRunner(out, provider="cpu").precision == "fp32"
    with pytest.raises(UserError, match="has no 8-bit model"):
        BundleRunner(out, provider="cpu", precision="int8")
    with pytest.raises(UserError, match="precision 'int4'"):
        BundleRunner(out, provider="cpu", precision="int4")
    rc = main(["predict", "--model", str(out), "--precision", "int8", "--out", str(tmp_path / "p"), str(SAMPLE)])
    err = capsys.readouterr().err
    assert rc == 2 and "has no 8-bit model" in err and "Traceback" not in err


def test_the_cli_reports_the_8_bit_model(tmp_path, tmp_path_factory, capsys):
    ckpt = trained_checkpoint(tmp_path_factory)
    rc = main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0 and "8-bit:" in err and "ms/frame, mask IoU with fp32" in err, err


def test_an_8_bit_model_that_disagrees_or_cannot_be_made_is_left_out(tmp_path, tmp_path_factory, caplog):
    heads = ["mask"]
    a = np.zeros((2, 8, 8), np.float32)
    a[:, 2:6, 2:6] = 0.9
    b = a.copy()
    b[:, 2:6, 4:6] = 0.1  # half the object gone in 8 bits
    fig = agreement(heads, [a], [b])
    assert fig["mask_iou"] == pytest.approx(0.5)
    assert "mask IoU with the fp32 model 0.500 < export.int8_min_iou 0.9" in refusal(fig, 0.9)
    assert refusal(agreement(heads, [a], [a]), 0.9) == ""
    emb = np.eye(2, dtype=np.float32)
    assert "embedding cosine" in refusal(agreement(["embedding"], [emb], [emb[::-1].copy()]), 0.9)

    frames = np.zeros((2, 32, 32, 3), np.uint8)
    caplog.set_level(logging.WARNING)
    fp32 = [np.zeros((2, 1, 32, 32), np.float32)]
    files, entry = with_int8({MODEL_FILE: b"not an onnx model"}, heads, frames, frames, fp32, ExportConfig())
    assert list(files) == [MODEL_FILE] and entry["skipped"].startswith("quantization failed")
    assert "event=int8_skipped" in caplog.text or any("int8_skipped" in r.getMessage() for r in caplog.records)

    # a real export whose check cannot pass (an IoU above 1): published, fp32 only, the reason kept
    ckpt = trained_checkpoint(tmp_path_factory)
    cfg = dataclasses.replace(ExportConfig(), int8_min_iou=1.01)
    r = export_checkpoint(ckpt, tmp_path / "e", cfg, frames=sample_frames(8))
    assert sorted(p.name for p in r.path.iterdir()) == ["manifest.json", MODEL_FILE]
    assert "export.int8_min_iou 1.01" in r.manifest["int8"]["skipped"]
    assert load_bundle(r.path).int8_path is None


def test_config_names_a_bad_precision():
    with pytest.raises(ValueError, match="export.student_precision must be auto or fp32 or int8"):
        dataclasses.replace(ExportConfig(), student_precision="int4").validate()
    with pytest.raises(ValueError, match="export.int8_min_iou must be in"):
        dataclasses.replace(ExportConfig(), int8_min_iou=2.0).validate()
