"""Reference masks for the still-camera real clips (synth.reference_masks): build the set,
print a table per clip and write a contact sheet per clip for a person to check by eye.

    python -m bench.real_reference                          # ../shared/data -> bench/out/real_v1
    python -m bench.real_reference --data DIR --out DIR     # build elsewhere (rebuilds if asked)
    python -m bench.real_reference --rebuild                # replace an existing set

The sheet bench/out/real_reference_<clip>.png shows the median background plate, then nine frames
spread over the clip with the reference outline in red and the void (not scored) tinted cyan.
The table and the per-clip figures also go to bench/out/real_reference.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import OUT, tile
from common.errors import UserError
from synth import reference_masks as rm
from synth.things import load_gt

SHEET_FRAMES = 9
TILE = 480


def marked(rgb: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The frame with the void tinted cyan and the object's outline drawn in red."""
    out = rgb.copy()
    void = ref == rm.VOID
    out[void] = (0.45 * out[void] + 0.55 * np.array([0, 230, 255])).astype(np.uint8)
    contours, _ = cv2.findContours((ref == rm.OBJECT).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thick = max(1, rgb.shape[1] // 300)
    cv2.drawContours(out, contours, -1, (255, 30, 30), thick)
    return out


def sheet(folder: Path, entry: dict, path: Path) -> None:
    n = entry["frames"]
    picks = set(np.linspace(0, n - 1, SHEET_FRAMES).round().astype(int).tolist())
    sample, _ = rm.sample_frames(Path(entry["file"]), 160)
    tiles = [tile(rm.median_background(sample), TILE, "median background")]
    del sample
    for i, image in enumerate(rm.decoded_frames(Path(entry["file"]))):
        if i in picks:
            ref = load_gt(folder / entry["name"], i)
            fg, void = (ref == rm.OBJECT).mean(), (ref == rm.VOID).mean()
            tiles.append(tile(marked(image, ref), TILE, f"{i}: fg {fg:.1%} void {void:.1%}"))
    cols = 4
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.vstack([np.hstack(tiles[r : r + cols]) for r in range(0, len(tiles), cols)])
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=rm.DEFAULT_DATA, help="folder of the real clips")
    ap.add_argument("--out", type=Path, default=OUT, help="root of the set (real_v<VERSION> under it)")
    ap.add_argument("--rebuild", action="store_true", help="replace an existing set")
    args = ap.parse_args(argv)
    try:
        folder = args.out / f"real_v{rm.VERSION}"
        if args.rebuild and folder.exists():
            shutil.rmtree(folder)
        t0 = time.monotonic()
        folder, entries = rm.reference_set(args.out, args.data)
        print(f"reference set {folder} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
        OUT.mkdir(parents=True, exist_ok=True)
        rows = []
        print("| clip | frames | size | mean foreground | mean void |")
        print("| --- | ---: | --- | ---: | ---: |")
        for e in entries:
            path = OUT / f"real_reference_{e['name']}.png"
            sheet(folder, e, path)
            print(
                f"| {e['name']} | {e['frames']} | {e['width']}x{e['height']} | "
                f"{e['mean_foreground']:.1%} | {e['mean_void']:.1%} |"
            )
            rows.append({**e, "sheet": str(path)})
        (OUT / "real_reference.json").write_text(json.dumps({"folder": str(folder), "clips": rows}, indent=1))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
