"""The export gate's holdout follows the scene (motionmask/holdout.py): a camera's stream switches
background (day to night, another place) half way; the real motion pipeline fills a real ring
buffer, a real tiny learner trains on it through the daemon's feed filter, and the window is
collected every step as in the learner process. After the switch the holdout holds only frames
from after it, and never a sample that training drew."""

import numpy as np
import pytest
from _learner_data import tiny_config
from _media import moving_square

from exporter.config import ExportConfig
from exporter.export import Holdout, holdout_score
from learner.held_back import HeldBack as _HeldBack
from learner.samples import RingFeed
from learner.train import Limits, Trainer, fit
from motionmask.config import ConfigError, load_config
from motionmask.holdout import HoldoutWindow
from streamer.config import StreamerConfig
from streamer.frames import Frame
from streamer.motion.pipeline import MotionSegmenter
from streamer.shm.ringbuffer import BufferConfig, RingBuffer, sample_from_result

W, H = 160, 120
SWITCH = 90  # the frame at which the background changes


def _stream() -> list[np.ndarray]:
    day = moving_square(SWITCH, W, H, size=32, step=3, seed=0)
    night = [
        (f.astype(np.float32) * 0.35).astype(np.uint8) for f in moving_square(90, W, H, size=32, step=3, seed=1)
    ]  # another background, dark
    return day + night


class _Recorder:
    """The feed as training sees it: remembers every put_seq handed to a training step."""

    def __init__(self, feed) -> None:
        self.feed, self.drawn = feed, set()
        self.height, self.width = feed.height, feed.width

    def sample(self, n, rng, out):
        b = self.feed.sample(n, rng, out)
        self.drawn |= {int(q) for q in b.put_seq}
        return b

    def __getattr__(self, name):
        return getattr(self.feed, name)


def test_the_holdout_follows_a_scene_change_and_never_holds_a_trained_sample():
    bcfg = BufferConfig(train_width=W, train_height=H, memory_mb=8, per_shot_cap=0)
    scfg = StreamerConfig()  # the daemon tests' small teacher (conftest.py); pruning is not what is tested
    scfg.flow.width, scfg.motion.num_superpixels = 64, 60
    scfg.prune.min_fg, scfg.prune.max_border_fg, scfg.prune.max_unsure = 0.0, 1.0, 1.0
    with RingBuffer.create(bcfg) as ring:
        window = HoldoutWindow(ring, size=6, every=4, block=3)
        recorder = _Recorder(_HeldBack(RingFeed(ring), window))
        trainer = Trainer(tiny_config(batch=4))
        seg = MotionSegmenter(scfg)
        frame_of: dict[int, int] = {}  # put_seq -> frame index
        before_switch = None

        def train(steps: int) -> None:
            window.collect()
            fit(
                trainer,
                recorder,
                None,
                Limits(steps=trainer.step_count + steps),
                progress=False,
                on_step=lambda t, r: window.collect() and False,
            )

        for i, img in enumerate(_stream()):
            for r in seg.push(Frame(img, "cam", i, i / 25.0)):
                if r.kept:
                    assert ring.put(sample_from_result(r, "cam", bcfg))
                    frame_of[ring.stats()["puts"]] = r.frame.index
            if i == SWITCH - 1:
                train(3)
                before_switch = [s.frame_index for s in window.samples()]
            elif i % 15 == 14 and len(frame_of) > 8:
                train(2)
        for r in seg.flush():
            if r.kept:
                assert ring.put(sample_from_result(r, "cam", bcfg))
        train(2)

        # the stream had both scenes in the buffer, training drew from both
        assert min(frame_of.values()) < SWITCH <= max(frame_of.values())
        assert any(frame_of.get(q, SWITCH) < SWITCH for q in recorder.drawn)
        assert any(frame_of.get(q, 0) >= SWITCH for q in recorder.drawn)
        # before the switch the holdout was the day scene; after it, only the night
        assert before_switch and all(f < SWITCH for f in before_switch)
        held = window.samples()
        assert len(held) == 6 and all(s.frame_index >= SWITCH for s in held), [s.frame_index for s in held]
        day_mean = np.mean([s.image.mean() for s in held])
        assert day_mean < 60  # the pixels are the dark scene's, not only the frame numbers
        # not one of them was ever trained on, and every drawn sample was a training one
        assert not {s.put_seq for s in held} & recorder.drawn
        assert recorder.drawn and not any(window.held(q) for q in recorder.drawn)
        # the gate can judge on it: the real exporter holdout and score
        holdout = Holdout.for_model(held, trainer.model, ExportConfig(), slot_size=(H, W))
        assert holdout.images.shape[0] == 6 and (holdout.trimaps != 128).any()
        score = holdout_score(trainer.model, holdout)
        assert np.isfinite(score["holdout_bce"]) and 0.0 <= score["holdout_iou"] <= 1.0


def test_held_out_blocks_are_one_in_every():
    with RingBuffer.create(BufferConfig(train_width=16, train_height=16, memory_mb=1)) as ring:
        window = HoldoutWindow(ring, size=4, every=5, block=3)
        held = [q for q in range(1, 61) if q in window]
        assert held == [1, 2, 3, 16, 17, 18, 31, 32, 33, 46, 47, 48]  # from the first block on
        with pytest.raises(ValueError, match="every"):
            HoldoutWindow(ring, size=4, every=1, block=3)


def test_holdout_keys_are_typed_and_named(tmp_path):
    cfg = load_config(None).export
    assert (cfg.holdout_samples, cfg.holdout_every, cfg.holdout_block) == (64, 10, 8)
    bad = tmp_path / "bad.yaml"
    bad.write_text("export:\n  holdout_every: 1\n")
    with pytest.raises(ConfigError, match=r"export\.holdout_every must be between 2 and 1000"):
        load_config(bad)
    bad.write_text("export:\n  holdout_block: many\n")
    with pytest.raises(ConfigError, match=r"export\.holdout_block: expected an integer"):
        load_config(bad)
