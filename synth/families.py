"""The synthetic families by name: tune on "things", report every family (issue 18), and the
benchmarks' cache of generated clips."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from common.errors import UserError
from synth import patchwork, things

FAMILIES = ("things", "patchwork")  # tune on "things", report every family (issue 18)


def family_generate(family: str) -> tuple[int, Callable[..., list[dict]]]:
    """(VERSION, generate) of a synthetic family: "things" (synth/things.py) or "patchwork"
    (synth/patchwork.py, built on other assumptions, never tuned on)."""
    if family == "things":
        return things.VERSION, things.generate
    if family == "patchwork":
        return patchwork.VERSION, patchwork.generate
    raise UserError(f"unknown synthetic family {family!r}; choose one of {', '.join(FAMILIES)}")


def cached(root: str | Path, seed: int, clips: int, family: str = "things") -> tuple[Path, list[dict]]:
    """The clips of (family, seed, clips) under root, generated on first use (the benchmarks'
    cache): synth_v<VERSION>_s<seed>_n<clips> for "things" (the name it always had),
    synth_<family>_v<VERSION>_s<seed>_n<clips> for the others. A change of a generator bumps its
    VERSION, so it never scores against stale clips."""
    version, gen = family_generate(family)
    prefix = "synth" if family == "things" else f"synth_{family}"
    d = Path(root) / f"{prefix}_v{version}_s{seed}_n{clips}"
    if (d / "clips.json").exists():
        return d, json.loads((d / "clips.json").read_text())
    return d, gen(d, seed=seed, clips=clips, progress=True)
