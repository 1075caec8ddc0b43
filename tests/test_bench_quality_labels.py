"""bench.quality and bench.labels end to end on a tiny generated folder (--data), and the
family list they share (bench/families.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.families import FAMILIES, Skipped, folder_family, resolve, select
from synth.things import generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 12-frame clip at 96x72; its last reference frame made empty with a void patch, as a
    real clip's frames without an object are."""
    d = tmp_path_factory.mktemp("tiny")
    generate(d, seed=3, clips=1, frames=12, size=(96, 72))
    last = np.zeros((72, 96), np.uint8)
    last[:10, :10] = 128
    cv2.imwrite(str(d / "clip000" / "gt" / "000011.png"), last)
    return d


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_quality_reports_every_figure_of_a_folder(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    proc = _run("bench.quality", "--data", str(tiny), "--out", str(out))
    doc = json.loads(out.read_text())
    assert list(doc["families"]) == ["data:" + tiny.name]
    fam = doc["families"]["data:" + tiny.name]
    for m in ("motion_masks", "saliency", "otsu"):
        s = fam["summary"][m]
        assert s["frames"] == 11 and s["empty_frames"] == 1
        for key in ("iou", "best_iou", "best_threshold", "precision", "recall", "ece", "empty_fp"):
            assert s[key] is not None and 0.0 <= s[key] <= 1.0, (m, key)
        assert s["best_iou"] >= s["iou"]
    assert set(fam["targets"]) == {"gap_to_otsu", "gap_met", "calibration_gap", "calibration_met"}
    assert len(fam["reliability"]) == 10 and len(fam["curve"]["motion_masks"]) == len(doc["thresholds_grid"])
    assert fam["per_clip"][0]["clip"] == "clip000" and not fam["tuning"]
    assert doc["machine"]["revision"]
    sheet = cv2.imread(fam["contact_sheet"])
    assert sheet is not None and sheet.shape[1] == 3 * 240
    assert "teacher IoU@0.5 - Otsu" in proc.stdout and "reliability" in proc.stdout


def test_labels_reports_a_folder_per_clip(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.json"
    proc = _run("bench.labels", "--data", str(tiny), "--out", str(out))
    doc = json.loads(out.read_text())
    fam = doc["families"]["data:" + tiny.name]
    t = fam["total"]
    assert t["frames"] == 12 and 0 <= t["kept"] <= 12 and len(fam["clips"]) == 1
    for key in ("fg_positive", "fg_negative", "bg_positive"):
        assert key in t and set(fam["targets"][key]) == {"value", "bound", "at_least", "met"}
    assert "| clip000 |" in proc.stdout and "(>= 70%)" in proc.stdout


def test_families_and_the_tuning_mark(tmp_path: Path) -> None:
    assert [f.name for f in select(None)] == ["things-s100", "things-s7", "patchwork-s1", "real"]
    assert [f.name for f in FAMILIES.values() if f.tuning] == ["things-s100"]
    assert [f.name for f in select(["real", "things-s7"])] == ["things-s7", "real"]
    with pytest.raises(ValueError):
        select(["things-s8"])
    assert folder_family(tmp_path).name == f"data:{tmp_path.name}"
    with pytest.raises(Skipped, match="nowhere"):  # no shared data: a one-line note naming the folder
        resolve(FAMILIES["real"], out=tmp_path, data=tmp_path / "nowhere")
