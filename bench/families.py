"""The evaluation families every quality figure is reported on (issue 18: tune on one, report all).

    from bench.families import chosen, each_resolved, print_skipped

    skipped = {}
    for fam, folder, clips in each_resolved(chosen(args.family, extra), skipped):
        ...                                # generated / built under bench/out on first use
    print_skipped(skipped)                 # one line each, naming what is missing

Each family resolves to a folder in the synthetic sets' format (clips.json, <clip>/gt/NNNNNN.png
with 0 background, 255 moving object, 128 void): synth.families.cached for the synthetic ones,
synth.reference_masks.reference_set for the real clips. things-s100 is THE TUNING SET: the
streamer's thresholds were chosen on it, so its figures flatter the teacher; every table marks it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import OUT, ROOT

SHARED_DATA = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "synth" (synth.families.cached) | "real" (synth.reference_masks) | "folder" (--data)
    synth_family: str = ""
    seed: int = 0
    clips: int = 0
    tuning: bool = False  # the streamer was tuned on it: its figures are not an unseen result
    folder: Path | None = None  # kind "folder" only


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("things-s100", "synth", "things", 100, 10, tuning=True),
        Family("things-s7", "synth", "things", 7, 10),
        Family("patchwork-s1", "synth", "patchwork", 1, 10),
        Family("real", "real"),
    )
}


class Skipped(Exception):
    """A family that cannot be scored here (its source data is absent); str() is the one-line note."""


def folder_family(path: str | Path) -> Family:
    """Any folder in the synthetic sets' format (--data), named after it."""
    p = Path(path)
    return Family(f"data:{p.name or p}", "folder", folder=p)


def synth_family(seed: int, clips: int) -> Family:
    """A "things" set of any seed and size (quality.py --seed/--clips); seed 100 is the tuning seed."""
    return Family(
        f"things-s{seed}" + ("" if clips == 10 else f"-n{clips}"), "synth", "things", seed, clips, tuning=seed == 100
    )


def select(names: list[str] | None) -> list[Family]:
    """The named families in FAMILIES order (all of them for None or []); ValueError on an unknown name."""
    if not names:
        return list(FAMILIES.values())
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown family {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    return [f for f in FAMILIES.values() if f.name in names]


def chosen(names: list[str] | None, extra: Sequence[Family] = ()) -> list[Family]:
    """The --family names (all of FAMILIES when none is named and there is no `extra`), then the
    `extra` families (a --data folder, a --seed/--clips set) that are not among them."""
    named = select(names) if names or not extra else []
    return named + [f for f in extra if f.name not in {n.name for n in named}]


def each_resolved(families: Iterable[Family], skipped: dict[str, str]) -> Iterator[tuple[Family, Path, list[dict]]]:
    """(family, folder, clips.json entries) of each family that resolves; one that is Skipped is
    printed on a line of its own and noted in `skipped` (name -> note) instead."""
    for fam in families:
        try:
            folder, clips = resolve(fam)
        except Skipped as e:
            print(f"\n{e}")
            skipped[fam.name] = str(e)
            continue
        yield fam, folder, clips


def print_skipped(skipped: dict[str, str]) -> None:
    """The skipped families' notes again, under a summary table."""
    for note in skipped.values():
        print(note)


def title(fam: Family) -> str:
    return f"{fam.name} (THE TUNING SET)" if fam.tuning else fam.name


def resolve(fam: Family, out: Path = OUT, data: Path = SHARED_DATA) -> tuple[Path, list[dict]]:
    """(folder, clips.json entries) of a family, generated under `out` on first use; Skipped when
    the real clips' source videos are not in `data`."""
    if fam.kind == "folder":
        from learner.evaluate import synth_clips

        return fam.folder, synth_clips(fam.folder)
    if fam.kind == "synth":
        from synth.families import cached

        return cached(out, fam.seed, fam.clips, family=fam.synth_family)
    from common.errors import UserError
    from synth.reference_masks import CLIPS, VERSION, reference_set

    built = (out / f"real_v{VERSION}" / "clips.json").exists()
    missing = [c.file for c in CLIPS if not (data / c.file).is_file()]
    if not built and missing:
        raise Skipped(f"{fam.name}: skipped, {data} does not hold {', '.join(missing)} (the shared real clips)")
    try:
        return reference_set(out, data)
    except UserError as e:  # built earlier, but a source video has gone since
        raise Skipped(f"{fam.name}: skipped, {e}") from None
