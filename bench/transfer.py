"""What each self-supervised signal buys the shared backbone (issue 6), in the spirit of the
papers' low-shot transfer: pre-train the same backbone with different heads for the same minutes
on the same synthetic clips, freeze it, train a fresh mask head on 20 ground-truth-labelled
frames, and score that head on unseen clips.

    python -m bench.transfer            # about 15 min on 2 CPU cores (3 backbones x 3 min of pre-training)
    python -m bench.transfer --quick    # about 3 min: smaller, noisier
Prints tables and writes bench/out/transfer.json.

Backbones compared (one seed, one initialisation; heads are drawn after the backbone):
  random      no pre-training
  mask        the mask head on the motion masks' trimaps (Pathak et al. 2017)
  mask+emb    plus tracked-patch embeddings (Wang & Gupta 2015), pairs mined by streamer/motion/patches.py
              (--track-length 15: synthetic shots last 20-90 frames; --pairs gt: pairs cut around
              the same object instance from the ground truth instead, i.e. perfect tracking)
  all         plus soft segments grouped by the flow (S3-CNN, affine loss)
Pre-training data: `motionmask synth` clips (H.264) through the real streamer (motion masks,
DIS flow, patch mining) into a ring buffer, no ground truth anywhere. Bootstrapping is off.

Scores (ground truth: synth/things.py gt/ and inst/ maps):
  transfer IoU  frozen backbone + a fresh FPN mask head trained on 20 labelled frames of other
                clips (--label-seed), mean IoU at p >= 0.5 over frames with a moving object of
                unseen clips (--eval-seed)
  retrieval     a moving object's patch at frame t of a shot, its own patch `gap` frames later
                among the patches of every other moving object of the unseen clips: top-1 by
                cosine similarity. With the embedding head's vectors where there is one, and with
                the global-pooled top feature of every backbone
  grouping      best-match IoU of the segments (argmax over L) with each moving instance, mean
                over instances; references: the whole frame as one segment, and an untrained head
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from bench.common import OUT, progress_bar
from common.atomic import write_json
from learner.heads import forward_heads
from learner.model import FPNMaskHead, init_weights
from learner.samples import RingFeed
from learner.train import Limits, Trainer, fit
from motionmask.config import load_config
from streamer.frames import Frame
from streamer.motion.pipeline import MotionSegmenter
from streamer.shm.ringbuffer import BufferConfig, RingBuffer, sample_from_result, slots_for
from synth.things import VERSION, generate, load_gt, object_patch

VARIANTS = {"random": (), "mask": (), "mask+emb": ("embedding",), "all": ("embedding", "segments")}


# ---- data ------------------------------------------------------------------------------------


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def clip_set(folder: Path, seed: int, clips: int, frames: int) -> list[dict]:
    """`motionmask synth` clips (made once per generator version, seed and count), each with frames,
    GT and instances."""
    meta = folder / "clips.json"
    entries = json.loads(meta.read_text()) if meta.is_file() else []
    if len(entries) != clips or entries[0]["frames"] != frames:
        entries = generate(folder, seed=seed, clips=clips, frames=frames, progress=True)
    out = []
    for e in entries:
        d = folder / e["name"]
        rgb = decode(folder / e["file"])
        out.append(
            {
                **e,
                "dir": d,
                "rgb": rgb,
                "gt": [load_gt(d, i) for i in range(len(rgb))],
                "inst": [load_gt(d, i, kind="inst") for i in range(len(rgb))],
            }
        )
    return out


def ring_mb(height: int, width: int, slots: int) -> float:
    """The smallest ring buffer, in MB, that holds `slots` samples: its whole bytes, found with
    the ring's own slots_for (the ring holds exactly these samples, as it always has)."""
    lo, hi = 0, 1 << 20
    while slots_for(height, width, hi / 2**20) < slots:
        hi *= 2
    while lo < hi:  # the fewest bytes b with slots_for(b) >= slots
        mid = (lo + hi) // 2
        if slots_for(height, width, mid / 2**20) >= slots:
            hi = mid
        else:
            lo = mid + 1
    return hi / 2**20


def stream(clips: list[dict], cfg, gt_pairs: bool = False) -> tuple[RingBuffer, object, dict]:
    """The real streamer over the pre-training clips: kept samples into a ring, mined pairs in memory."""
    from learner.pairs import MemoryPairFeed
    from streamer.motion.patches import PatchMiner, PatchPair

    bcfg = cfg.buffer
    pcfg = copy.deepcopy(cfg.streamer.patches)
    pcfg.enabled = True
    samples, pairs, frames = [], [], 0
    bar = progress_bar(sum(len(c["rgb"]) for c in clips), "stream")
    for c in clips:
        seg, miner = MotionSegmenter(cfg.streamer), PatchMiner(pcfg, camera=c["name"])
        results = []
        for i, rgb in enumerate(c["rgb"]):
            results += seg.push(Frame(image=rgb, source_id=c["name"], index=i, timestamp=i / 30))
            bar.update(1)
        results += seg.flush()
        for r in results:
            pairs += miner.push(r)
            if r.kept:
                samples.append(sample_from_result(r, c["name"], bcfg))
        pairs += miner.flush()
        frames += len(results)
    if gt_pairs:  # the same object instance track_length frames apart in a shot, from the ground truth
        pairs, L = [], pcfg.track_length
        for c in clips:
            starts = c["shot_starts"] + [len(c["rgb"])]
            for s in range(len(starts) - 1):
                for t0 in range(starts[s], starts[s + 1] - L, pcfg.start_every):
                    for obj in {o["id"] for o in c["objects"] if o["moving"]}:
                        a = object_patch(c["rgb"][t0], c["inst"][t0] == obj, pcfg.size, 40)
                        b = object_patch(c["rgb"][t0 + L], c["inst"][t0 + L] == obj, pcfg.size, 40)
                        if a is not None and b is not None:
                            pairs.append(PatchPair(a, b, c["name"], s, t0, t0 + L, int(obj)))
    bar.close()
    n = len(samples) + 2
    ring = RingBuffer.create(
        BufferConfig(
            train_width=bcfg.train_width,
            train_height=bcfg.train_height,
            memory_mb=ring_mb(bcfg.train_height, bcfg.train_width, n),
            per_shot_cap=n,
        )
    )
    for s in samples:
        ring.put(s)
    feed = MemoryPairFeed(pairs) if pairs else None
    groups = len(np.unique(feed.group)) if feed else 0
    return ring, feed, {"frames": frames, "samples": len(samples), "pairs": len(pairs), "pair_groups": groups}


def padded(frames: list[np.ndarray], stride: int = 32) -> tuple[np.ndarray, tuple[int, int]]:
    """N x H' x W' x 3, padded right and bottom (edge pixels) to a multiple of the stride."""
    h, w = frames[0].shape[:2]
    ph, pw = -h % stride, -w % stride
    return np.stack([cv2.copyMakeBorder(f, 0, ph, 0, pw, cv2.BORDER_REPLICATE) for f in frames]), (h, w)


def moving_frames(clips: list[dict], every: int, min_fg: float = 0.005) -> list[tuple[int, int]]:
    """(clip, frame) pairs with a moving object, every `every`th frame."""
    return [
        (c, i)
        for c, clip in enumerate(clips)
        for i in range(1, len(clip["rgb"]), every)
        if (clip["gt"][i] > 0).mean() >= min_fg
    ]


# ---- pre-training ------------------------------------------------------------------------------


def learner_config(cfg, heads: tuple[str, ...], seed: int = 0):
    lc = copy.deepcopy(cfg.learner)
    lc.train.device, lc.train.seed = "cpu", seed
    lc.heads.embedding.enabled = "embedding" in heads
    lc.heads.segments.enabled = "segments" in heads
    return lc


def pretrain(name: str, cfg, ring, pairs, minutes: float, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    heads = VARIANTS[name]
    trainer = Trainer(learner_config(cfg, heads if name != "random" else ("embedding", "segments"), seed))
    info = {"heads": ["mask", *heads] if name != "random" else [], "steps": 0, "crops": 0, "minutes": 0.0}
    if name != "random":
        print(f"pre-training {name}: heads {', '.join(info['heads'])}, {minutes:g} min", file=sys.stderr)
        s = fit(
            trainer,
            RingFeed(ring),
            None,
            Limits(minutes=minutes),
            progress=True,
            pairs=pairs if "embedding" in heads else None,
        )
        info.update(
            steps=s.steps,
            crops=s.crops,
            minutes=round(trainer.train_seconds / 60, 2),
            last_losses={k: round(v, 4) for k, v in s.last_losses.items()},
        )
    return trainer.model.eval(), info


# ---- scores ------------------------------------------------------------------------------------


@torch.no_grad()
def pyramids(model, images: np.ndarray, batch: int = 8) -> list[torch.Tensor]:
    out = None
    for i in range(0, len(images), batch):
        x = model.normalize(torch.from_numpy(images[i : i + batch]).permute(0, 3, 1, 2))
        levels = [f.clone() for f in model.features(x)]
        out = levels if out is None else [torch.cat([a, b]) for a, b in zip(out, levels)]
    return out


def transfer_iou(
    model,
    train_x: np.ndarray,
    train_gt: np.ndarray,
    test_x: np.ndarray,
    test_gt: np.ndarray,
    hw: tuple[int, int],
    steps: int,
    seed: int = 0,
) -> dict:
    """A fresh FPN mask head on the frozen backbone's features of the labelled frames; mean IoU
    of its masks on the test frames (the frame's region only, not the padding)."""
    h, w = hw
    feats, test_feats = pyramids(model, train_x), pyramids(model, test_x)
    torch.manual_seed(seed)
    head = FPNMaskHead(model.channels, model.cfg.decoder or 2 * model.cfg.resolved_width())
    holder = torch.nn.Module()  # init_weights initialises model.heads["mask"] with the foreground prior
    holder.heads = torch.nn.ModuleDict({"mask": head})
    init_weights(holder)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    target = torch.from_numpy(train_gt > 0).float()
    g = torch.Generator().manual_seed(seed)
    for _step in range(steps):
        idx = torch.randperm(len(target), generator=g)[:10]
        head.train()
        logits = head([f[idx] for f in feats])[:, 0, :h, :w]
        loss = F.binary_cross_entropy_with_logits(logits, target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        prob = torch.cat(
            [torch.sigmoid(head([f[i : i + 8] for f in test_feats])[:, 0, :h, :w]) for i in range(0, len(test_x), 8)]
        ).numpy()
    ious = []
    for p, gt in zip(prob, test_gt):
        m, g_ = p >= 0.5, gt > 0
        ious.append((m & g_).sum() / max(1, (m | g_).sum()))
    return {"iou": float(np.mean(ious)), "frames": len(ious), "train_loss": float(loss.detach())}


def retrieval_set(clips: list[dict], gap: int, every: int = 10) -> dict:
    """Queries: a moving object's patch at t; matches: its patch at t + gap (same shot); the
    gallery holds every match patch, so the other objects' (and other times') are the distractors."""
    q, g, q_key, g_key = [], [], [], []
    for c, clip in enumerate(clips):
        movers = {o["id"] for o in clip["objects"] if o["moving"]}
        starts = clip["shot_starts"] + [len(clip["rgb"])]
        for s in range(len(starts) - 1):
            for t0 in range(starts[s] + 1, starts[s + 1] - gap, every):
                t1 = t0 + gap
                for obj in movers:
                    a = object_patch(clip["rgb"][t0], clip["inst"][t0] == obj, 64, 40)
                    b = object_patch(clip["rgb"][t1], clip["inst"][t1] == obj, 64, 40)
                    if a is None or b is None:
                        continue
                    q.append(a), g.append(b)
                    q_key.append((c, obj, t0)), g_key.append((c, obj, t0))
    return {"query": np.stack(q), "gallery": np.stack(g), "keys": q_key}


@torch.no_grad()
def embed(model, patches: np.ndarray, use_head: bool) -> torch.Tensor:
    x = model.normalize(torch.from_numpy(patches).permute(0, 3, 1, 2))
    if use_head:
        return forward_heads(model, x, ["embedding"])["embedding"]
    return F.normalize(model.features(x)[-1].mean(dim=(2, 3)), dim=1)


def retrieval_top1(model, rs: dict, use_head: bool) -> float:
    """Fraction of queries whose nearest gallery patch (cosine) is their own object gap frames later;
    distractors are the other objects' patches (the same object at other times is left out)."""
    q, g = embed(model, rs["query"], use_head), embed(model, rs["gallery"], use_head)
    sim = q @ g.T
    keys = rs["keys"]
    hits = 0
    for i, (c, obj, t0) in enumerate(keys):
        same_object_other_time = torch.tensor([(k[0], k[1]) == (c, obj) and k[2] != t0 for k in keys])
        s = sim[i].masked_fill(same_object_other_time, -2.0)
        hits += int(int(s.argmax()) == i)
    return hits / len(keys)


@torch.no_grad()
def grouping_iou(model, x: np.ndarray, inst: list[np.ndarray], hw: tuple[int, int]) -> dict:
    """Best-match IoU of the hard segments (argmax over L) with each moving instance (>= 50 px)."""
    h, w = hw
    best, whole = [], []
    for i in range(0, len(x), 8):
        t = model.normalize(torch.from_numpy(x[i : i + 8]).permute(0, 3, 1, 2))
        seg = forward_heads(model, t, ["segments"])["segments"].argmax(1)[:, :h, :w].numpy()
        for s, ins in zip(seg, inst[i : i + 8]):
            for obj in np.unique(ins):
                m = ins == obj
                if obj == 0 or m.sum() < 50:
                    continue
                ious = [(m & (s == lab)).sum() / (m | (s == lab)).sum() for lab in np.unique(s)]
                best.append(max(ious))
                whole.append(m.mean())
    return {"best_match_iou": float(np.mean(best)), "whole_frame_iou": float(np.mean(whole)), "instances": len(best)}


# ---- main --------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    t_start = time.time()
    cfg = load_config(None)
    cfg.streamer.patches.track_length = args.track_length
    data = Path(args.data)
    pre = clip_set(data / f"pretrain_v{VERSION}_s{args.seed}", args.seed, args.clips, args.frames)
    lab = clip_set(data / f"label_v{VERSION}_s{args.label_seed}", args.label_seed, 4, args.frames)
    ev = clip_set(data / f"eval_v{VERSION}_s{args.eval_seed}", args.eval_seed, args.eval_clips, args.frames)

    ring, pairs, streamed = stream(pre, cfg, gt_pairs=args.pairs == "gt")
    print(
        f"streamed {streamed['frames']} frames: {streamed['samples']} samples, {streamed['pairs']} tracked-patch "
        f"pairs in {streamed['pair_groups']} shots",
        file=sys.stderr,
    )
    sets = scoring_sets(lab, ev, args.labelled, args.gap)
    results = {}
    try:
        for name in args.variants:
            model, info = pretrain(name, cfg, ring, pairs, args.minutes, args.train_seed)
            results[name] = score_backbone(model, info, name, sets, args.head_steps)
            print(f"{name}: transfer IoU {results[name]['transfer']['iou']:.3f}", file=sys.stderr)
    finally:
        ring.close()
    args.variants = ",".join(args.variants)  # recorded as given
    res = {
        "args": vars(args),
        "synth_version": VERSION,
        "streamed": streamed,
        "labelled_frames": len(sets["train_x"]),
        "test_frames": len(sets["test_x"]),
        "retrieval_queries": len(sets["retrieval"]["keys"]),
        "results": results,
        "seconds": round(time.time() - t_start, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": 1},
    }
    write_json(Path(args.out), res)
    print_tables(res)
    print(f"wrote {args.out} ({res['seconds'] / 60:.1f} min)")
    return 0


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="3 min: 0.5 min per backbone, fewer clips and head steps")
    ap.add_argument("--minutes", type=float, default=3.0, help="pre-training minutes per backbone (default 3)")
    ap.add_argument("--seed", type=int, default=100, help="pre-training clips")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--label-seed", type=int, default=11, help="clips the 20 labelled frames come from")
    ap.add_argument("--labelled", type=int, default=20)
    ap.add_argument("--eval-seed", type=int, default=7, help="unseen clips for every score")
    ap.add_argument("--eval-clips", type=int, default=6)
    ap.add_argument("--head-steps", type=int, default=150, help="steps of the fresh mask head (batch 10)")
    ap.add_argument("--gap", type=int, default=15, help="retrieval: frames between a query and its match")
    ap.add_argument(
        "--pairs",
        choices=("miner", "gt"),
        default="miner",
        help="tracked-patch pairs: streamer/motion/patches.py (default) or ground-truth tracks",
    )
    ap.add_argument("--track-length", type=int, default=15, help="frames from a query patch to its tracked patch")
    ap.add_argument("--train-seed", type=int, default=0, help="initialisation and sampling of the pre-training")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"which backbones (default: {','.join(VARIANTS)})")
    ap.add_argument("--data", default=str(OUT / "transfer_data"))
    ap.add_argument("--out", default=str(OUT / "transfer.json"))
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if not variants or set(variants) - set(VARIANTS):
        ap.error(f"--variants {args.variants}: choose from {', '.join(VARIANTS)}")
    args.variants = variants
    if args.quick:
        args.minutes, args.clips, args.eval_clips, args.head_steps = 0.5, 4, 3, 60
    return args


def scoring_sets(lab: dict, ev: dict, n_labelled: int, gap: int) -> dict:
    """The labelled frames the fresh head trains on, the unseen frames it is scored on (with
    their instances, for grouping) and the retrieval queries."""
    labelled = moving_frames(lab, 1)
    pick = np.linspace(0, len(labelled) - 1, n_labelled).round().astype(int)
    labelled = [labelled[i] for i in pick]
    train_x, hw = padded([lab[c]["rgb"][i] for c, i in labelled])
    test = moving_frames(ev, 6)
    test_x, _ = padded([ev[c]["rgb"][i] for c, i in test])
    return {
        "train_x": train_x,
        "hw": hw,
        "train_gt": np.stack([lab[c]["gt"][i] for c, i in labelled]),
        "test_x": test_x,
        "test_gt": np.stack([ev[c]["gt"][i] for c, i in test]),
        "test_inst": [ev[c]["inst"][i] for c, i in test],
        "retrieval": retrieval_set(ev, gap),
    }


def score_backbone(model, info: dict, name: str, sets: dict, head_steps: int) -> dict:
    """Transfer IoU and retrieval top-1 of a pre-trained backbone (and its heads' own scores)."""
    r = {
        **info,
        "transfer": transfer_iou(
            model, sets["train_x"], sets["train_gt"], sets["test_x"], sets["test_gt"], sets["hw"], head_steps
        ),
        "retrieval_top1_backbone": retrieval_top1(model, sets["retrieval"], use_head=False),
    }
    if "embedding" in info["heads"]:
        r["retrieval_top1_embedding"] = retrieval_top1(model, sets["retrieval"], use_head=True)
    if "segments" in model.heads and name in ("all", "random"):
        r["grouping"] = grouping_iou(model, sets["test_x"], sets["test_inst"], sets["hw"])
    return r


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_tables(res: dict) -> None:
    a = res["args"]
    st = res["streamed"]
    print(
        f"\npre-training data: {st['samples']} samples kept of {st['frames']} frames; {st['pairs']} tracked-patch "
        f"pairs ({a['pairs']}) from {st['pair_groups']} shots"
    )
    print(
        f"low-shot transfer: frozen backbone, fresh mask head on {res['labelled_frames']} labelled frames, "
        f"mean IoU on {res['test_frames']} frames of {a['eval_clips']} unseen clips; retrieval top-1 over "
        f"{res['retrieval_queries']} queries"
    )
    print(
        "| backbone | pre-training | steps | transfer IoU | retrieval top-1 (pooled backbone) | "
        "retrieval top-1 (embedding head) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in res["results"].items():
        pre = f"{r['minutes']:g} min" if r["steps"] else "none"
        print(
            f"| {name} | {pre} | {r['steps']} | {r['transfer']['iou']:.3f} | {r['retrieval_top1_backbone']:.3f} | "
            f"{_f(r.get('retrieval_top1_embedding'))} |"
        )
    if not any("grouping" in r for r in res["results"].values()):
        return
    print("\ngrouping: best-match IoU of the segments (argmax) with each moving instance")
    print("| segments head | best-match IoU | whole frame as one segment | instances |")
    print("|---|---|---|---|")
    for name in ("all", "random"):
        g = res["results"].get(name, {}).get("grouping")
        if g:
            label = "trained (all heads)" if name == "all" else "untrained"
            print(f"| {label} | {g['best_match_iou']:.3f} | {g['whole_frame_iou']:.3f} | {g['instances']} |")


if __name__ == "__main__":
    sys.exit(main())
