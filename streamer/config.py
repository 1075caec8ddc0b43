"""Typed configuration of the streamer. Loaded from YAML by motionmask.config; defaults here."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import check


@dataclass
class SourceConfig:
    open_timeout_s: float = 5.0  # network and camera open
    read_timeout_s: float = 5.0  # a live source silent for this long counts as dropped
    reconnect: bool = True  # live sources (camera, network) reconnect after a drop
    reconnect_backoff_s: float = 0.5  # first wait; doubles up to the max
    reconnect_backoff_max_s: float = 10.0
    max_reconnects: int = 0  # 0 = retry forever
    drop_stale: bool = True  # live sources: skip frames that queued up while we were busy
    loop: bool = False  # files and folders: start again at the end (demo / make run)
    camera_width: int = 0  # 0 = the camera's default
    camera_height: int = 0
    camera_fps: float = 0.0
    folder_fps: float = 25.0  # timestamps for a folder of images


@dataclass
class ShotConfig:
    hist_bins: int = 16  # per HSV channel
    window: int = 30  # frames of history for the adaptive threshold
    k_sigma: float = 5.0  # a cut is a distance this many robust sigmas above the recent median
    min_distance: float = 0.25  # ... and at least this absolute (Hellinger) histogram distance
    dissolve_gap: int = 8  # a gradual transition: far from the frame this many frames back...
    dissolve_distance: float = 0.50  # ... by at least this distance
    min_shot_len: int = 3  # frames; suppresses double cuts at fades
    dark_luma: float = 20.0  # mean luma (0-255) below which a frame is "black" and never cuts


@dataclass
class FlowConfig:
    width: int = 240  # working resolution (height follows the aspect ratio)
    # DIS preset: ultrafast | fast | medium. ultrafast (no variational refinement) at the working
    # resolution, with patches 6 px apart, costs what "fast" at half of it did and measures small
    # and fast movers whole where that smeared them over the ground (docs/teacher.md)
    preset: str = "ultrafast"
    finest_scale: int = 0  # DIS pyramid level where flow stops: 0 = the working resolution, 1 = half of it
    patch_stride: int = 6  # px between DIS's 8x8 patches; 0 = the preset's (4, medium 3)
    fb_sigma: float = 1.0  # forward-backward error (working px) at which confidence is exp(-1/2)


@dataclass
class GlobalMotionConfig:
    model: str = "homography"  # homography | affine
    samples: int = 600  # flow vectors sampled for RANSAC
    ransac_threshold: float = 0.5  # working px; slow objects hide inside a looser one
    min_inliers: float = 0.3  # below this fraction the camera model is unreliable


@dataclass
class MotionConfig:
    # The vote's defaults were chosen on synthetic clips of seed 100 and checked on seed 7
    # (bench/quality.py), then against real footage by eye; retune on the same split.
    superpixels: str = "seeds"  # seeds (opencv-contrib) | slic (scikit-image)
    num_superpixels: int = 450  # SEEDS rounds to its block grid; see superpixels._closest_seeds
    history: int = 8  # recent frames of the same shot whose superpixels vote
    # k of the k-nearest-neighbour vote: 8 on the tuning set, though vtest's walkers are tighter with
    # 16 (real family 0.743 against 0.712; docs/teacher.md, the retuning on the finer flow)
    neighbours: int = 8
    lookahead: int = 0  # frames of delay traded for quality; 0 = causal
    iterations: int = 2  # rounds of vote propagation
    location_weight: float = 1.5  # location vs appearance in the neighbour search
    neighbour_weight: float = 2.0  # neighbours' total say relative to one fully reliable own measurement
    static_evidence: float = 0.2  # weight of "did not move" relative to "moved" (objects pause)
    prior: float = 0.05  # weight of "background" where evidence is thin (flat, unreliable regions)
    relay: float = 0.5  # share of the neighbours' weight a remembered vote passes on as evidence
    memory_decay: float = 0.95  # per frame, on the weight of remembered votes
    texture_scale: float = 2.0  # structure-tensor eigenvalue (gray levels^2 per px^2) at which flow is 63% trusted
    saliency_scale: float = 0.0  # residual flow (working px) at saliency 0.5; 0 = adaptive:
    noise_multiplier: float = 3.0  # ... this many times the frame's median camera-model residual,
    min_saliency_scale: float = 0.5  # ... but at least this (working px)
    # geodesic fill (streamer/motion/geodesic.py): a superpixel of reliability r keeps r / (r + trust) of
    # its vote and takes the rest from its geodesic distance to this frame's sure foreground vs
    # sure background; 0 = off. Off by default: at 0.3 it helps flat objects (patchwork)
    # but not the tuning family (docs/teacher.md); configs/geodesic.yaml turns it on
    geodesic_trust: float = 0.0
    # outline evidence (streamer/motion/outline.py): flat regions are told how much their outline
    # moved, with weight gain x the outline's measured edge x (1 - the region's own reliability);
    # 0 = off. Chosen on the tuning family; the cost and gain on every family: docs/teacher.md
    outline_gain: float = 1.0
    outline_max_reliability: float = 0.5  # superpixels less reliable than this may merge into a flat region...
    outline_max_colour_step: float = 8.0  # ... with a touching one of a mean Lab colour this close
    outline_band: int = 2  # working px just inside a region's outline that count as its outline
    edge_scale: float = 2.0  # larger structure-tensor eigenvalue at which an edge's motion is 63% trusted
    sure_fg: float = 0.5  # vote that seeds the foreground: the decision point, so no found object is erased...
    sure_bg: float = 0.2  # ... and the background (with the frame's border)
    edge_floor: float = 0.05  # cost of a step between two superpixels of the same colour (a typical edge costs 1)
    # coherence over time (streamer/motion/coherence.py): a residual that agrees with its own a frame
    # ago counts for up to 1 + this; 0 = off. Off by default: it finds slow movers, and its halo puts
    # patchwork's background labelled positive over 2% (docs/teacher.md); configs/coherence.yaml
    coherence_gain: float = 0.0
    # edge-aware refinement (streamer/motion/refine.py): the guided filter moves the vote's outline,
    # a superpixel's, to the frame's colour edges; radius in working px (0 = off), eps in grey
    # levels^2. Chosen on the tuning family; every family and the cost: docs/teacher.md
    refine_radius: int = 3
    refine_eps: float = 25.0


@dataclass
class PruneConfig:
    fg_threshold: float = 0.5  # probability that counts as foreground for the checks below
    # the paper discards frames under 10% foreground; its objects fill YouTube frames. A rig's are
    # often smaller (people across a room: 1-5%), and at 10% the learner starved: on the synthetic
    # benchmark 0.03 keeps more frames and the student scores higher (docs/learner-trials.md)
    min_fg: float = 0.03
    max_fg: float = 0.80
    border: float = 0.05  # width of the border band, as a fraction of each side
    max_border_fg: float = 0.10  # fraction of the band that may be foreground
    # of the pixels the trimap does not call negative, the share it calls "don't care" (between its
    # two thresholds) above which the frame is pruned ("unsure"): a mostly-unsure mask is one that
    # found fragments or edges of its objects, and trains the rest of them as background. 1 = off.
    # Tuned on the tuning family only; the cost on every family is in docs/teacher.md
    max_unsure: float = 0.8


@dataclass
class TrimapConfig:
    # Pathak et al. label < 0.4 negative and > 0.7 positive. The teacher's probability is not
    # calibrated that way: on every synthetic family its pixels are foreground more often than the
    # paper's thresholds assume (the reliability tables of `python -m bench.quality`; figures in
    # docs/teacher.md), so these thresholds give the paper's labels their meaning: positive where
    # most pixels are foreground, and far more object pixels labelled positive on kept frames.
    # negative_below sits at about the 10% point, and the "don't care" ring is narrow, so the
    # student is still told where an object ends: with a ring twice as wide it grew a halo around
    # every object. 0.35 taught the students as well and labelled more object pixels negative
    # (docs/teacher.md, "Labels the student can learn edges from")
    negative_below: float = 0.3
    positive_above: float = 0.6
    # "don't care" instead of negative within this fraction of the frame's diagonal of a positive,
    # and in holes of the mask: an object's own pixels next to its sure part are the likeliest
    # wrong negatives (a negative inside an object teaches that objects are background); 0 = off.
    # its share of the wrong negatives turned "don't care" is in docs/teacher.md
    near_positive: float = 0.02


@dataclass
class PatchConfig:
    """Tracked-patch pairs (Wang & Gupta 2015) for the learner's embedding head; see streamer/motion/patches.py."""

    enabled: bool = False
    size: int = 64  # P: pairs are P x P RGB patches
    track_length: int = 30  # frames from the query patch to the tracked one (same shot)
    box: float = 0.4  # box side as a fraction of the frame's shorter side (the paper: 227 of 448)
    points: int = 300  # interest points (Shi-Tomasi corners) per examined frame, working resolution
    move_threshold: float = 0.5  # working px: a point moves when its flow departs this far from the camera model
    min_moving: float = 0.25  # examined frames with fewer moving points are noise: skipped
    max_moving: float = 0.75  # ... with more, the camera model failed (or the scene is all motion): skipped
    min_box_points: int = 6  # moving points a track starts from (inside its box)
    start_every: int = 5  # frames between track starts of one camera: pairs not all of one moment
    max_tracks: int = 4  # tracks alive at once per camera
    min_survivors: float = 0.5  # a track ends when fewer of its points pass the forward-backward check
    store_mb: float = 32.0  # shared-memory pair store (daemon and offline train): pairs of the newest
    lock_timeout_ms: float = 2.0  # longest a camera waits for the pair store's slot lock before dropping


@dataclass
class StreamerConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    shots: ShotConfig = field(default_factory=ShotConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    global_motion: GlobalMotionConfig = field(default_factory=GlobalMotionConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    trimap: TrimapConfig = field(default_factory=TrimapConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)

    def validate(self) -> None:
        """Raise ValueError naming the key for values no type check catches."""
        checks = [
            ("flow.preset", self.flow.preset in ("ultrafast", "fast", "medium"), "ultrafast, fast or medium"),
            ("flow.width", 32 <= self.flow.width <= 2048, "between 32 and 2048"),
            ("flow.finest_scale", 0 <= self.flow.finest_scale <= 4, "between 0 and 4"),
            ("flow.patch_stride", 0 <= self.flow.patch_stride <= 8, "between 0 (the preset's) and 8"),
            ("global_motion.model", self.global_motion.model in ("homography", "affine"), "homography or affine"),
            ("motion.superpixels", self.motion.superpixels in ("seeds", "slic"), "seeds or slic"),
            ("motion.num_superpixels", self.motion.num_superpixels >= 4, ">= 4"),
            ("motion.history", self.motion.history >= 0, ">= 0"),
            ("motion.neighbours", self.motion.neighbours >= 1, ">= 1"),
            ("motion.lookahead", self.motion.lookahead >= 0, ">= 0"),
            ("motion.geodesic_trust", self.motion.geodesic_trust >= 0, ">= 0"),
            ("motion.outline_gain", self.motion.outline_gain >= 0, ">= 0 (0 = off)"),
            ("motion.coherence_gain", 0 <= self.motion.coherence_gain <= 1, "between 0 (off) and 1"),
            ("motion.refine_radius", 0 <= self.motion.refine_radius <= 64, "between 0 (off) and 64"),
            ("motion.refine_eps", self.motion.refine_eps > 0, "> 0"),
            ("motion.outline_max_reliability", 0 <= self.motion.outline_max_reliability <= 1, "in [0, 1]"),
            ("motion.outline_max_colour_step", self.motion.outline_max_colour_step >= 0, ">= 0"),
            ("motion.outline_band", 1 <= self.motion.outline_band <= 16, "between 1 and 16"),
            ("motion.edge_scale", self.motion.edge_scale > 0, "> 0"),
            ("motion.texture_scale", self.motion.texture_scale > 0, "> 0"),
            ("motion.sure_bg", 0 <= self.motion.sure_bg < self.motion.sure_fg <= 1, "0 <= sure_bg < sure_fg <= 1"),
            ("motion.edge_floor", self.motion.edge_floor > 0, "> 0"),
            ("prune.min_fg", 0 <= self.prune.min_fg <= self.prune.max_fg <= 1, "0 <= min_fg <= max_fg <= 1"),
            ("prune.border", 0 <= self.prune.border < 0.5, "in [0, 0.5)"),
            ("prune.max_unsure", 0 <= self.prune.max_unsure <= 1, "in [0, 1] (1 = off)"),
            (
                "trimap.negative_below",
                0 <= self.trimap.negative_below <= self.trimap.positive_above <= 1,
                "0 <= negative_below <= positive_above <= 1",
            ),
            ("trimap.near_positive", 0 <= self.trimap.near_positive <= 0.5, "in [0, 0.5]"),
            ("source.read_timeout_s", self.source.read_timeout_s > 0, "> 0"),
            ("source.open_timeout_s", self.source.open_timeout_s > 0, "> 0"),
            ("patches.size", 8 <= self.patches.size <= 512, "between 8 and 512"),
            ("patches.track_length", self.patches.track_length >= 1, ">= 1"),
            ("patches.box", 0.05 <= self.patches.box <= 1.0, "in [0.05, 1]"),
            ("patches.points", self.patches.points >= 8, ">= 8"),
            (
                "patches.min_moving",
                0 <= self.patches.min_moving <= self.patches.max_moving <= 1,
                "0 <= min_moving <= max_moving <= 1",
            ),
            ("patches.min_box_points", self.patches.min_box_points >= 1, ">= 1"),
            ("patches.start_every", self.patches.start_every >= 1, ">= 1"),
            ("patches.max_tracks", self.patches.max_tracks >= 1, ">= 1"),
            ("patches.min_survivors", 0 < self.patches.min_survivors <= 1, "in (0, 1]"),
            ("patches.store_mb", self.patches.store_mb > 0, "> 0"),
            ("patches.lock_timeout_ms", 0 <= self.patches.lock_timeout_ms <= 1000, "between 0 and 1000"),
        ]
        check("streamer", checks)
