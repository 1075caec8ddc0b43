"""bench.rig_daemon's scoring half, small and real: two real exported bundles (ONNX Runtime) scored
in one pass over a real rig stream's later part against its ground truth, their manifests read as
the daemon's exports, the rank correlation, and the tables. The daemon itself runs in
`python -m bench.rig_daemon --quick` (minutes: not in the suite)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _export_data import exported

from bench.rig_daemon import print_tables, score_bundles, shipped_bundles, spearman
from exporter.bundle import LATEST, versions
from synth import rig


def test_spearman_ranks_with_ties_and_too_few_pairs():
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [5, 6, 7, 8]) == pytest.approx(0.9486832980505138)  # ties share their mean rank
    assert spearman([1, 2, None, 3], [1, 2, 9, None]) is None  # two complete pairs
    assert spearman([0.5, 0.5, 0.5], [1, 2, 3]) is None  # a constant side ranks nothing


def test_bundles_scored_in_one_pass_match_each_alone(tmp_path, tmp_path_factory, capsys):
    entry = rig.generate_rig(tmp_path / "rig", seed=2, minutes=0.2, size=(96, 72))[0]
    video, clip_dir = tmp_path / "rig" / entry["file"], tmp_path / "rig" / entry["name"]
    split, frames = entry["split"]["test_start"], entry["frames"]
    exports = tmp_path / "exports"
    shutil.copytree(exported(tmp_path_factory), exports)
    found = shipped_bundles(exports, start_unix=0.0)
    assert [b["version"] for b in found] == versions(exports) and len(found) == 2
    assert found[-1]["version"] == (exports / LATEST).read_text().strip()
    manifest = json.loads((exports / found[0]["version"] / "manifest.json").read_text())
    assert found[0]["step"] == manifest["source"]["step"] and found[0]["minutes"] > 0

    dirs = [Path(b["dir"]) for b in found]
    together = score_bundles(video, clip_dir, split, frames, dirs)
    alone = [score_bundles(video, clip_dir, split, frames, [d])[0] for d in dirs]
    assert together == alone  # one pass gives each bundle its own frames and truths
    for s in together:
        assert s["frames"] + s["empty_frames"] == frames - split
        assert s["frames"] > 0  # actors walk in the later part of this stream
        for k in ("miou", "miou_moving", "still_recall"):
            assert s[k] is None or 0.0 <= s[k] <= 1.0, (k, s[k])
    assert together[0] != together[1]  # two bundles at two input sizes: not one scored twice

    for b, s in zip(found, together, strict=True):
        b["true"] = s
    run = {
        "gen_seed": 2,
        "train_seed": 0,
        "ptz": False,
        "stream": {"frames": frames, "split": split},
        "daemon": {
            "minutes": 0.2,
            "every_minutes": 0.33,
            "exit_status": 0,
            "status": {
                "step": 25,
                "crops_per_s": 10.0,
                "learner_restarts": 0,
                "camera_fps": 20.0,
                "holdout_samples": 64,
                "shipped": 2,
                "skipped": 1,
                "failed": 0,
                "decisions": [
                    {"step": 25, "outcome": "shipped", "holdout_iou": 0.5, "holdout_bce": 0.1},
                    {"step": 90, "outcome": "skipped", "reason": "not better", "holdout_iou": 0.4, "holdout_bce": 0.2},
                ],
            },
            "log_counts": {
                "export_published": 2,
                "export_skipped": 1,
                "export_failed": 0,
                "export_rejected": 0,
                "holdout_refreshed": 2,
                "export_seconds_mean": 12.5,
                "tracebacks": 0,
            },
        },
        "bundles": found,
        "spearman_holdout_vs_true": None,
        "offline": {"minutes": 0.2, "summary": "25 steps"},
        "last_vs_offline": {
            "last_export_miou": together[-1]["miou"],
            "offline_student_miou": 0.5,
            "gap": 0.01,
            "want": "<= 0.03",
            "met": True,
        },
    }
    print_tables({"runs": [run]})
    out = capsys.readouterr().out
    table = out[out.index("| bundle |") : out.index("| summary |")].strip().splitlines()[2:]
    names = [row.split(" | ")[0].lstrip("| ") for row in table]  # step order: the bundles, then the skip
    assert names == [b["version"] for b in found] + ["(skipped: not better)"]
    assert "12.5 s per export" in out
    assert "| bundles shipped / skipped / failed (status before the stop) | 2 / 1 / 0 |" in out
    assert "| target: abs(last export - offline student) <= 0.03 | 0.010: met |" in out
