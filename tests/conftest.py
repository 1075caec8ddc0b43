"""Fixtures for the tests that run a real `motionmask run` (test_daemon.py, test_learner_daemon.py,
test_daemon_export.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _media import free_port, moving_square, write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 160x120 with a square big enough to survive pruning; 2 s at 25 fps
    return write_video(
        tmp_path_factory.mktemp("clip") / "square.mp4", moving_square(50, 160, 120, size=36, step=3), fps=25
    )


@pytest.fixture
def learner_daemon_config(tmp_path: Path, clip: Path) -> Callable[..., dict[str, Any]]:
    """`make(shutdown_s, **learner)`: a daemon config with one camera looping `clip` and a tiny
    CPU learner in tmp_path/run, on ports free when it is made; `learner` adds to (or replaces
    keys of) its learner section."""

    def make(shutdown_s: float, **learner: Any) -> dict[str, Any]:
        return {
            "streamer": {
                "flow": {"width": 64},
                "motion": {"num_superpixels": 60},
                "prune": {"min_fg": 0.0, "max_border_fg": 1.0, "max_unsure": 1.0},
            },
            "buffer": {"train_width": 64, "train_height": 48, "memory_mb": 2},
            "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
            "daemon": {
                "control_endpoint": f"tcp://127.0.0.1:{free_port()}",
                "shutdown_timeout_s": shutdown_s,
                "restart_backoff_s": 0.3,
                "restart_backoff_max_s": 1.0,
                "stats_interval_s": 1.0,
            },
            "cameras": [{"name": "a", "source": str(clip), "loop": True}],
            "learner": {
                "enabled": True,
                "run_dir": str(tmp_path / "run"),
                "model": {"width": 8, "blocks": [1, 1, 1, 1]},
                "crops": {"size": 32},
                "train": {"batch": 4, "device": "cpu", "warmup_steps": 0, "threads": 1},
                **learner,
            },
        }

    return make
