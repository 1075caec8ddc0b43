"""Synthetic family "patchwork": deterministic, one shared photo pool, large objects, a box carried
by an arm that is foreground too, the CLI and the family-aware cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from motionmask.cli import main
from synth import families
from synth import patchwork as pw
from synth import things as synth

SMALL = (160, 120)


def _plans(n: int, frames: int = 24, size=SMALL):
    return [pw.plan_clip(synth.clip_seed(0, c), frames, size) for c in range(n)]


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path: Path):
    a = pw.generate(tmp_path / "a", seed=3, clips=2, frames=24, size=SMALL)
    b = pw.generate(tmp_path / "b", seed=3, clips=2, frames=24, size=SMALL)
    pw.generate(tmp_path / "c", seed=4, clips=1, frames=24, size=SMALL)
    assert a == b
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa == fb
    assert len([f for f in fa if f.startswith("clip000/gt/")]) == 24
    assert (tmp_path / "c" / "clip000.mp4").read_bytes() != fa["clip000.mp4"]
    for e in a:
        assert e["family"] == "patchwork" and e["version"] == pw.VERSION
        assert {"name", "file", "seed", "width", "height", "fps", "frames", "shot_starts", "shots", "objects"} <= set(e)
        assert synth.count_frames(tmp_path / "a" / e["file"]) == 24
        gt = synth.load_gt(tmp_path / "a" / e["name"], 0)
        assert gt.shape == (120, 160) and set(np.unique(gt)) <= {0, 255}


def test_backgrounds_and_object_textures_come_from_one_pool_apart_from_things():
    photos = pw.pool()
    assert 12 <= len(photos) <= 16
    sources = json.loads((pw.PHOTO_DIR / "sources.json").read_text())
    assert "Megamind.avi" not in {r["clip"] for r in sources}
    assert sum((pw.PHOTO_DIR / r["file"]).stat().st_size for r in sources) < 1_000_000
    backgrounds, textures = {}, {}  # photo -> clips that use it so
    for c, plan in enumerate(_plans(12)):
        for shot in plan.shots:
            backgrounds.setdefault(shot.photo, set()).add(c)
            for layer in shot.layers:
                if layer.part == "object":
                    textures.setdefault(layer.photo, set()).add(c)
    used = set(backgrounds) | set(textures)
    assert used <= set(photos)
    assert not used & set(synth.THINGS + synth.STUFF)
    # some photo is a background in one clip and an object's texture in another
    assert any(b != t for p in set(backgrounds) & set(textures) for b in backgrounds[p] for t in textures[p])


def test_a_carried_box_and_its_arm_are_one_foreground_object_that_moves_together():
    W, H = SMALL
    checked = 0
    for plan in _plans(16, frames=30):
        for shot in plan.shots:
            arms = [(i, layer) for i, layer in enumerate(shot.layers, start=1) if layer.part == "arm"]
            for arm_index, arm in arms:
                box_index = next(
                    i for i, layer in enumerate(shot.layers, start=1) if layer.carried and layer.inst == arm.inst
                )
                box = shot.layers[box_index - 1]
                assert box.role == "mover" and arm.role == "mover" and box.inst > 0
                seen = []
                for i in range(0, shot.length, 3):
                    r = synth.render_frame(plan, shot.start + i)
                    arm_px = r.layer == arm_index
                    if arm_px.sum() < 20 or (r.layer == box_index).sum() < 20:
                        continue
                    assert (r.gt[arm_px] == 255).all() and (r.inst[arm_px] == box.inst).all()
                    # the arm reaches the box: its pixel nearest the box centre lies within the box
                    centre = (synth.camera_at(shot, i, W, H) @ np.append(box.pos[i], 1.0))[:2]
                    ys, xs = np.nonzero(arm_px)
                    h, w = box.alpha.shape
                    reach = 0.5 * np.hypot(w, h) * box.scale[i] * shot.cam_zoom[i]
                    assert np.hypot(xs - centre[0], ys - centre[1]).min() <= reach
                    seen.append((centre, arm_px))
                # when the box has moved, its arm has moved too
                moved = [(a, b) for a, b in zip(seen, seen[1:]) if np.hypot(*(a[0] - b[0])) > 2]
                for (_, before), (_, after) in moved:
                    assert (before != after).sum() > 10
                checked += len(moved)
    assert checked >= 2, "no carried box moved in view in these seeds"


def test_some_objects_are_large():
    W, H = SMALL
    largest = 0.0
    for plan in _plans(10):
        for shot in plan.shots:
            r = synth.render_frame(plan, shot.start)
            for index, layer in enumerate(shot.layers, start=1):
                if layer.role == "mover" and layer.part == "object":
                    largest = max(largest, float((r.layer == index).mean()))
    assert largest > 0.2


def test_cli_writes_a_patchwork_set_and_rejects_a_bad_family(tmp_path: Path, capsys):
    out = tmp_path / "pw"
    assert (
        main(
            [
                "synth",
                "--out",
                str(out),
                "--family",
                "patchwork",
                "--clips",
                "1",
                "--frames",
                "12",
                "--size",
                "160x120",
                "--seed",
                "5",
                "--quiet",
            ]
        )
        == 0
    )
    entries = json.loads((out / "clips.json").read_text())
    assert [e["family"] for e in entries] == ["patchwork"]
    assert synth.count_frames(out / "clip000.mp4") == 12
    assert len(list((out / "clip000" / "inst").glob("*.png"))) == 12
    assert entries == pw.generate(tmp_path / "again", seed=5, clips=1, frames=12, size=(160, 120))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["synth", "--out", str(tmp_path / "x"), "--family", "stripes"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'stripes'" in err and "Traceback" not in err


def test_cache_is_keyed_by_family_and_keeps_the_things_name(tmp_path: Path):
    d, entries = families.cached(tmp_path, 5, 1, family="patchwork")
    assert d.name == f"synth_patchwork_v{pw.VERSION}_s5_n1"
    assert entries[0]["family"] == "patchwork" and (d / "clip000.mp4").exists()
    again, same = families.cached(tmp_path, 5, 1, family="patchwork")
    assert again == d and same == entries
    # an existing "things" cache keeps its name and is served as it is
    things_dir = tmp_path / f"synth_v{synth.VERSION}_s5_n1"
    things_dir.mkdir()
    (things_dir / "clips.json").write_text("[]")
    assert families.cached(tmp_path, 5, 1) == (things_dir, [])
    with pytest.raises(synth.UserError):
        families.cached(tmp_path, 5, 1, family="stripes")
