"""Scenario "rig" (issue 19): one long stream, recurring actors with stable ids, a still map that
starts one second into a stop, GT that keeps paused actors, a 70/30 split by time, the CLI."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import av
import numpy as np
import pytest

from motionmask.cli import main
from synth import rig
from synth import things as synth

SMALL = (96, 72)
MINUTES = 0.3  # 270 frames at 15 fps


@cache
def _plan(seed: int = 0, minutes: float = 3.0, ptz: bool = False) -> rig.RigPlan:
    """A plan only (no frames rendered): long enough for every actor to come back."""
    return rig.plan_rig(seed, minutes, SMALL, ptz=ptz)


def _files(d: Path) -> dict[str, bytes]:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


def _stops(plan: rig.RigPlan):
    """(actor, visit) for every visit that stands at its spot for more than one second."""
    return [(a, v) for a in plan.actors for v in a.visits if v.stop is not None and v.go - v.stop > plan.fps + 1]


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path: Path):
    a = rig.generate_rig(tmp_path / "a", seed=2, minutes=MINUTES, size=SMALL)
    b = rig.generate_rig(tmp_path / "b", seed=2, minutes=MINUTES, size=SMALL)
    assert a == b
    fa = _files(tmp_path / "a")
    assert fa == _files(tmp_path / "b")
    assert len([f for f in fa if f.startswith("rig/still/")]) == a[0]["frames"] == 270
    c = rig.plan_rig(3, MINUTES, SMALL)
    assert not np.array_equal(rig.render_rig_frame(c, 100).rgb, rig.render_rig_frame(_plan(2, MINUTES), 100).rgb)


def test_an_actor_keeps_its_id_and_look_on_every_visit():
    plan = _plan()
    back = [a for a in plan.actors if len([v for v in a.visits if v.stop is not None]) >= 2]
    assert back, "some actor must stop on two visits of a 3-minute stream"
    for actor in back:
        first, second = [v for v in actor.visits if v.stop is not None][:2]
        looks = []
        for v in (first, second):
            t = v.stop
            r = rig.render_rig_frame(plan, t)
            mine = r.inst == actor.id
            assert mine.sum() > 20
            ys, xs = np.nonzero(mine)
            # the pixels with its id are where the plan put it: feet at the bottom centre
            assert abs(xs.mean() - v.feet[t - v.enter, 0]) < actor.alpha.shape[1]
            assert abs(ys.max() - v.feet[t - v.enter, 1]) < 4
            looks.append(r.rgb[mine].mean(0))
        assert np.abs(looks[0] - looks[1]).max() < 40  # one sprite (its light drifts a little)
    assert {a.id for a in plan.actors} == set(range(1, len(rig.CAST) + 1))


def test_the_still_map_starts_one_second_into_a_stop_and_never_marks_a_moving_actor():
    plan = _plan()
    fps = plan.fps
    checked = 0
    for actor, v in _stops(plan)[:4]:
        for t, still in (
            (v.stop - 1, False),
            (v.stop, False),
            (v.stop + fps - 1, False),
            (v.stop + fps, True),
            (v.go - 1, True),
            (v.go, False),
        ):
            r = rig.render_rig_frame(plan, t)
            mine = r.inst == actor.id
            if mine.sum() < 10:
                continue  # hidden behind another actor
            assert (actor.id in rig.still_ids(plan, t)) == still, (actor.id, t)
            assert bool((r.still[mine] == 255).all()) == still and bool((r.still[mine] == 255).any()) == still
            checked += 1
    assert checked >= 12
    # over a whole stream of plans: still only between stop + 1 s and go, and only actors standing there
    for t in range(plan.frames):
        for actor in plan.actors:
            v = actor.visit_at(t)
            marked = actor.id in rig.still_ids(plan, t)
            assert marked == (v is not None and v.stop is not None and v.stop + fps <= t < v.go)


def test_gt_covers_paused_actors_and_the_still_map_is_part_of_it():
    plan = _plan()
    actor, v = _stops(plan)[0]
    for t in (v.stop, v.stop + 3, v.go - 1):  # standing: just stopped, paused, still
        r = rig.render_rig_frame(plan, t)
        mine = r.inst == actor.id
        assert mine.sum() > 20 and (r.gt[mine] == 255).all()
        assert set(np.unique(r.gt)) <= {0, 255} and set(np.unique(r.still)) <= {0, 255}
        assert ((r.still > 0) <= (r.gt > 0)).all() and ((r.gt > 0) == (r.inst > 0)).all()
    # while nobody visits, the frame has no GT at all (the decoys are background)
    idle = [t for t in range(plan.frames) if all(a.visit_at(t) is None for a in plan.actors)]
    if idle:
        assert rig.render_rig_frame(plan, idle[0]).gt.max() == 0


def test_ptz_moves_the_view_and_a_standing_actor_is_still_in_the_world():
    plan = _plan(1, 3.0, ptz=True)
    assert np.ptp(plan.cam_center[:, 0]) > 10 and np.ptp(plan.cam_zoom) > 0.05
    assert not plan.actors[0].visits or plan.world.shape[1] > SMALL[0]
    actor, v = _stops(plan)[0]
    assert actor.id in rig.still_ids(plan, v.stop + plan.fps)


def test_clips_json_splits_70_30_and_lists_every_visit(tmp_path: Path):
    entry = rig.rig_info(_plan())
    assert entry["frames"] == 2700 and entry["fps"] == 15 and entry["shot_starts"] == [0]
    assert entry["split"] == {"train_frames": 1890, "test_start": 1890}
    assert entry["family"] == "rig" and entry["version"] == rig.VERSION and entry["ptz"] is False
    for a in entry["cast"]:
        for v in a["visits"]:
            assert v["enter"] < v["leave"] <= entry["frames"]
            if v["stop"] is not None:
                assert v["enter"] < v["stop"] < v["go"] < v["leave"]
                assert v["kind"] != "stop" or 1 <= v["stand_seconds"] <= 6
                assert v["kind"] != "stay" or 10 <= v["stand_seconds"] <= 30
    json.dumps(entry)


def test_cli_writes_the_stream_and_cached_rig_finds_it(tmp_path: Path, capsys):
    out = tmp_path / "rig"
    assert (
        main(
            [
                "synth",
                "--scenario",
                "rig",
                "--out",
                str(out),
                "--minutes",
                str(MINUTES),
                "--size",
                "96x72",
                "--seed",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    entries = json.loads((out / "clips.json").read_text())
    assert [(e["name"], e["file"], e["frames"]) for e in entries] == [("rig", "rig.mp4", 270)]
    assert entries[0]["split"]["train_frames"] == 189
    with av.open(str(out / "rig.mp4")) as c:
        assert c.streams.video[0].average_rate == 15
    assert synth.count_frames(out / "rig.mp4") == 270
    for kind in ("gt", "inst", "still"):
        assert len(list((out / "rig" / kind).glob("*.png"))) == 270
    assert synth.load_gt(out / "rig", 0, "still").shape == (72, 96)
    d = tmp_path / f"rig_v{rig.VERSION}_s4_m0.3_ptz"
    d.mkdir()
    (d / "clips.json").write_text("[]")
    assert rig.cached_rig(tmp_path, 4, 0.3, ptz=True) == (d, [])


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--scenario", "rig", "--minutes", "0"], "--minutes 0"),
        (["--scenario", "rig", "--clips", "3"], "--clips: applies to the families"),
        (["--ptz"], "--ptz: applies to --scenario rig only"),
        (["--scenario", "rig", "--fps", "0"], "--fps 0"),
    ],
)
def test_a_bad_option_is_one_line_and_a_non_zero_exit(tmp_path: Path, capsys, argv, says):
    assert main(["synth", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err
