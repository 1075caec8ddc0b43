"""Extract the photo pool of the synthetic family "patchwork" (synth/patchwork.py) from
the real clips in ../shared/data/, once. The photos are committed under synth/data/patchwork/
so that the family is frozen and a fresh clone generates it without ../shared.

    .venv/bin/python -m bench.extract_patchwork_photos [--data ../shared/data]

Rerunning it rewrites the JPEGs (the bytes may differ with another OpenCV build, which would change
the family: do not rerun it on a quoted version; add photos under a new family version instead).
Megamind.avi is left out on purpose (animated shot cuts with black frames, kept for other uses).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import av
import cv2

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "streamer" / "data" / "patchwork"
MAX_WIDTH = 480
QUALITY = 85

# clip -> frame indices (0-based, in decode order), picked by eye from a contact sheet for variety:
# scenes differ within bikes; vtest and bigbuckbunny repeat a scene, so that some photos are
# near-duplicates of others (a source of low-contrast objects)
PICKS: dict[str, list[int]] = {
    "vtest.avi": [0, 441, 794],
    "tree.avi": [0, 40],
    "bigbuckbunny.mp4": [0, 43, 101],
    "bikes.mp4": [0, 55, 110, 150, 200],
    "carphone_pristine.mp4": [0, 79],
}


def extract(data: Path, out: Path) -> list[dict]:
    """Write the picked frames as JPEGs under out and return what each is (file, clip, frame, size)."""
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for clip, picks in PICKS.items():
        wanted = set(picks)
        with av.open(str(data / clip)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    records.append(_save(frame.to_ndarray(format="bgr24"), clip, index, out))
                if index >= max(picks):
                    break
        missing = wanted - {r["frame"] for r in records if r["clip"] == clip}
        if missing:
            raise SystemExit(f"{clip}: frames {sorted(missing)} not found")
    return records


def _save(bgr, clip: str, index: int, out: Path) -> dict:
    h, w = bgr.shape[:2]
    if w > MAX_WIDTH:  # INTER_AREA: a downscale without aliasing
        h, w = round(h * MAX_WIDTH / w), MAX_WIDTH
        bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
    name = f"{Path(clip).stem.split('_')[0]}_{index:04d}.jpg"
    if not cv2.imwrite(str(out / name), bgr, [cv2.IMWRITE_JPEG_QUALITY, QUALITY]):
        raise SystemExit(f"{out / name}: cannot write")
    return {"file": name, "clip": clip, "frame": index, "width": w, "height": h}


def main() -> None:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder of the source clips")
    args = ap.parse_args()
    records = extract(args.data, OUT)
    (OUT / "sources.json").write_text(json.dumps(records, indent=1) + "\n")
    total = sum((OUT / r["file"]).stat().st_size for r in records)
    print(f"{len(records)} photos, {total / 1024:.0f} KiB, in {OUT}")


if __name__ == "__main__":
    main()
