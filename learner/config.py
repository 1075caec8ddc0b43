"""Typed configuration of the learner (the `learner:` section of the YAML config); defaults here.

The defaults are chosen for the CPU: they give a useful student from ten 90-frame 320x240 clips
in 12 minutes on two cores. On a GPU raise `train.batch` (e.g. 256) and `crops.size` (e.g. 224).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from common.config import check
from learner.transport_config import DEFAULT_LISTEN, TransportConfig

# ImageNet statistics in 0..1 units: any fixed values work, these keep activations near unit scale
# on natural images. The exporter bakes them into the exported graph.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

BACKBONES = ("compact", "alexnet")
FUSION_RULES = ("linear", "geometric")
SEGMENT_LOSSES = ("affine", "entropy")
ROBUST_LOSSES = ("charbonnier", "huber", "l2")
DEFAULT_WIDTH = {"compact": 24, "alexnet": 96}  # channels of the first stage
DEFAULT_CROP = {"compact": 128, "alexnet": 227}  # the paper: w = 227 for AlexNet


@dataclass
class ModelConfig:
    backbone: str = "compact"  # compact (fully convolutional, edge devices) | alexnet (the paper)
    width: int = (
        0  # channels of the first stage, doubled per stage; 0 = the backbone's default (compact 24, alexnet 96)
    )
    blocks: list[int] = field(default_factory=lambda: [1, 2, 2, 1])  # compact: residual blocks at strides 4, 8, 16, 32
    decoder: int = 0  # compact: decoder channels; 0 = 2 x width
    mask_size: int = 56  # alexnet: s, the FC head predicts an s x s mask
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))  # input = (rgb / 255 - mean) / std
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def resolved_width(self) -> int:
        return self.width or DEFAULT_WIDTH.get(self.backbone, 24)

    def checks(self) -> list[tuple[str, bool, str]]:
        """(key, ok, what it must be) for common.config.check; keys relative to learner."""
        return [
            ("model.backbone", self.backbone in BACKBONES, " or ".join(BACKBONES)),
            ("model.width", 0 <= self.width <= 1024, "between 0 and 1024 (0 = default)"),
            (
                "model.blocks",
                len(self.blocks) == 4 and all(0 <= n <= 16 for n in self.blocks),
                "four block counts between 0 and 16, e.g. [1, 2, 2, 1]",
            ),
            ("model.decoder", 0 <= self.decoder <= 1024, "between 0 and 1024 (0 = 2 x width)"),
            ("model.mask_size", 4 <= self.mask_size <= 256, "between 4 and 256"),
            ("model.mean", len(self.mean) == 3, "three numbers (R, G, B in 0..1)"),
            ("model.std", len(self.std) == 3 and all(v > 0 for v in self.std), "three positive numbers"),
        ]


@dataclass
class CropConfig:
    size: int = 0  # crop side in pixels fed to the net; 0 = the backbone's default (compact 128, alexnet 227)
    per_frame: int = 1  # crops cut from each buffer sample drawn (more: fewer copies out of the buffer per crop)
    context_min: float = 1.3  # box side / longer side of the positive region's bounding box...
    context_max: float = 2.6  # ... drawn log-uniformly in this range (jitter in scale)
    shift: float = 0.25  # box centre moves up to this fraction of the box side (jitter in position)
    min_side: float = 0.2  # smallest box, as a fraction of the frame's shorter side (tiny segments)
    random_fraction: float = 0.5  # crops placed at random (side 0.4-1.0 of the frame) even when there are positives
    flip: bool = True  # horizontal flips, half the crops
    brightness: float = 0.3  # colour jitter: factors drawn in [1 - x, 1 + x]
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.1  # hue rotation of up to +-this fraction of a turn
    grayscale: float = 0.1  # probability that a crop is made grey
    paste: float = 0.5  # copy-paste: probability that a crop gets another crop's object pasted on top
    paste_rim: float = 0.04  # ... grown by this fraction of the crop side, that ring "don't care"

    def resolved_size(self, backbone: str) -> int:
        return self.size or DEFAULT_CROP.get(backbone, 128)

    def checks(self, backbone: str) -> list[tuple[str, bool, str]]:
        """(key, ok, what it must be) for common.config.check; keys relative to learner."""
        return [
            ("crops.size", self.size == 0 or 32 <= self.size <= 1024, "0 (default) or between 32 and 1024"),
            ("crops.size", backbone != "compact" or self.size % 32 == 0, "a multiple of 32 for the compact backbone"),
            ("crops.size", backbone != "alexnet" or self.size == 0 or self.size >= 67, ">= 67 for alexnet"),
            ("crops.per_frame", 1 <= self.per_frame <= 64, "between 1 and 64"),
            (
                "crops.context_min",
                1.0 <= self.context_min <= self.context_max <= 8.0,
                "1 <= context_min <= context_max <= 8",
            ),
            ("crops.shift", 0 <= self.shift <= 0.5, "between 0 and 0.5"),
            ("crops.min_side", 0 < self.min_side <= 1, "in (0, 1]"),
            ("crops.random_fraction", 0 <= self.random_fraction <= 1, "between 0 and 1"),
            ("crops.brightness", 0 <= self.brightness < 1, "in [0, 1)"),
            ("crops.contrast", 0 <= self.contrast < 1, "in [0, 1)"),
            ("crops.saturation", 0 <= self.saturation <= 1, "between 0 and 1"),
            ("crops.hue", 0 <= self.hue <= 0.5, "between 0 and 0.5 (a fraction of a turn)"),
            ("crops.grayscale", 0 <= self.grayscale <= 1, "between 0 and 1"),
            ("crops.paste", 0 <= self.paste <= 1, "between 0 and 1"),
            ("crops.paste_rim", 0 <= self.paste_rim <= 0.25, "between 0 and 0.25"),
        ]


@dataclass
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda
    strict_device: bool = False  # cuda requested but absent: false = fall back to the CPU with a warning; true = error
    batch: int = 24  # crops per step
    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 1e-4
    schedule: str = (
        "cosine"  # constant | cosine (cosine decays over the run's step/time budget; online runs stay constant)
    )
    warmup_steps: int = 50
    min_lr_fraction: float = 0.05  # cosine ends at lr x this
    grad_clip: float = 5.0  # max global gradient norm; 0 = off
    max_nan_steps: int = 20  # consecutive non-finite losses that stop training with an error
    compile: bool = False  # torch.compile the model (CUDA: faster after a warm-up of a minute)
    channels_last: bool = (
        True  # with bf16 (CUDA, or cpu_precision bf16): the memory format tensor cores and oneDNN like
    )
    cpu_precision: str = (
        "auto"  # auto | bf16 | fp32: training on the CPU; auto = bf16 where the CPU has native bf16 (AVX512-BF16, AMX)
    )
    threads: int = 0  # CPU threads of torch; 0 = the cores this process may use, minus one for the streamer
    seed: int = 0
    # `motionmask train`: data-parallel ranks it starts (DDP; one GPU each on CUDA, gloo on the CPU;
    # learner/distributed.py)
    nproc: int = 1
    sync_batchnorm: bool = True  # with several ranks: batch norm over the global batch (false: each rank's own)
    steps: int = 0  # offline (`motionmask train`): stop after this many steps; 0 = no step limit
    minutes: float = 12.0  # ... or after this long, whichever comes first; 0 = no time limit
    log_every: int = 10  # steps per RUN/train.jsonl line

    def checks(self) -> list[tuple[str, bool, str]]:
        """(key, ok, what it must be) for common.config.check; keys relative to learner."""
        return [
            ("train.device", self.device in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
            ("train.threads", 0 <= self.threads <= 1024, "between 0 and 1024 (0 = auto)"),
            ("train.nproc", 1 <= self.nproc <= 1024, "between 1 and 1024"),
            ("train.batch", 1 <= self.batch <= 65536, "between 1 and 65536"),
            ("train.lr", 0 < self.lr < 1, "in (0, 1)"),
            ("train.weight_decay", self.weight_decay >= 0, ">= 0"),
            ("train.schedule", self.schedule in ("constant", "cosine"), "constant or cosine"),
            ("train.cpu_precision", self.cpu_precision in ("auto", "bf16", "fp32"), "auto, bf16 or fp32"),
            ("train.warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("train.min_lr_fraction", 0 <= self.min_lr_fraction <= 1, "between 0 and 1"),
            ("train.grad_clip", self.grad_clip >= 0, ">= 0 (0 = off)"),
            ("train.max_nan_steps", self.max_nan_steps >= 1, ">= 1"),
            ("train.steps", self.steps >= 0, ">= 0 (0 = no limit)"),
            ("train.minutes", self.minutes >= 0, ">= 0 (0 = no limit)"),
            ("train.log_every", self.log_every >= 1, ">= 1"),
        ]


@dataclass
class CheckpointConfig:
    every_steps: int = 1000  # save every N steps...
    every_minutes: float = 3.0  # ... and at least this often; and always at shutdown. 0 = off
    keep: int = 3  # step_XXXXXXX.pt files kept (last.pt is always the newest of them)

    def checks(self) -> list[tuple[str, bool, str]]:
        """(key, ok, what it must be) for common.config.check; keys relative to learner."""
        return [
            ("checkpoint.every_steps", self.every_steps >= 0, ">= 0 (0 = off)"),
            ("checkpoint.every_minutes", self.every_minutes >= 0, ">= 0 (0 = off)"),
            ("checkpoint.keep", self.keep >= 1, ">= 1"),
        ]


@dataclass
class SamplesConfig:
    sampling: str = ""  # uniform | recency; "" = buffer.sampling
    wait_log_s: float = 30.0  # an empty buffer: one log line when waiting starts and then every this many seconds
    offline_draws_per_sample: float = (
        4.0  # offline, buffer full: the streamer waits until the learner drew this many samples per eviction
    )
    offline_max_buffer_mb: float = 1024.0  # offline: the buffer grows up to this to hold every frame of the inputs

    def checks(self) -> list[tuple[str, bool, str]]:
        """(key, ok, what it must be) for common.config.check; keys relative to learner."""
        return [
            (
                "samples.sampling",
                self.sampling in ("", "uniform", "recency"),
                'uniform, recency or "" (= buffer.sampling)',
            ),
            ("samples.wait_log_s", self.wait_log_s > 0, "> 0"),
            ("samples.offline_draws_per_sample", self.offline_draws_per_sample >= 0, ">= 0 (0 = never wait)"),
            ("samples.offline_max_buffer_mb", self.offline_max_buffer_mb > 0, "> 0"),
        ]


@dataclass
class BootstrapConfig:
    """Rounds of pseudo-label refinement (learner/bootstrap.py): the student's own prediction
    fused with the motion probability, the trimap re-derived, training goes on on the result."""

    enabled: bool = True
    every_steps: int = 400  # a round every this many steps...
    start_step: int = 0  # ... the first one at this step; 0 = every_steps
    rule: str = "linear"  # linear: w * student + (1 - w) * motion | geometric: weighted mean of the log-odds
    weight_start: float = 0.3  # w, the student's weight, in the first round...
    weight_step: float = 0.0  # ... plus this per later round (0: no ramp; see learner/bootstrap.py)...
    weight_max: float = 0.3  # ... up to this
    max_rounds: int = 0  # 0 = no limit (the daemon refines new samples every round)
    max_samples: int = 0  # buffer samples refined per round, newest first; 0 = all of them
    batch: int = 16  # frames per forward pass while refining
    publish: bool = True  # the daemon publishes refined masks (kind `refined`)

    def checks(self) -> list[tuple[str, bool, str]]:
        """(key, ok, what it must be) for common.config.check; keys relative to learner."""
        return [
            ("bootstrap.every_steps", self.every_steps >= 1, ">= 1"),
            ("bootstrap.start_step", self.start_step >= 0, ">= 0 (0 = every_steps)"),
            ("bootstrap.rule", self.rule in FUSION_RULES, " or ".join(FUSION_RULES)),
            ("bootstrap.weight_start", 0 <= self.weight_start <= 1, "between 0 and 1"),
            ("bootstrap.weight_step", 0 <= self.weight_step <= 1, "between 0 and 1"),
            ("bootstrap.weight_max", self.weight_start <= self.weight_max <= 1, "between weight_start and 1"),
            ("bootstrap.max_rounds", self.max_rounds >= 0, ">= 0 (0 = no limit)"),
            ("bootstrap.max_samples", self.max_samples >= 0, ">= 0 (0 = all)"),
            ("bootstrap.batch", 1 <= self.batch <= 4096, "between 1 and 4096"),
        ]


@dataclass
class MaskHeadConfig:
    enabled: bool = True  # the mask head is the model's output (bootstrapping, predict, export): always on
    weight: float = 1.0  # its loss's weight in the total when other heads are on (alone, it is the loss)


@dataclass
class EmbeddingHeadConfig:
    """Tracked-patch embeddings (Wang & Gupta 2015): triplet ranking loss on (query, tracked) pairs."""

    enabled: bool = False
    weight: float = 1.0
    dim: int = 128  # length of the L2-normalised vector
    hidden: int = 256  # the MLP's hidden layer on the global-pooled top feature
    margin: float = 0.5  # M in max(0, D(q, t) - D(q, n) + M), D = 1 - cos
    hard_negatives: int = 4  # K: after warm-up, the K hardest negatives per pair
    warmup_steps: int = 500  # before this step every negative counts (the paper: random negatives first)
    patch: int = 64  # patches are fed at this side (resized when the pair store's differs)
    pairs: int = 16  # pairs drawn per step (each gives two patches through the backbone)


@dataclass
class SegmentsHeadConfig:
    """Soft segments grouped by motion (S3-CNN, Mahendran et al. 2018); the flow enters the loss only."""

    enabled: bool = False
    weight: float = 1.0
    count: int = 8  # L, softmax channels
    loss: str = (
        "affine"  # affine: per-segment weighted least-squares affine fit | entropy: flow-magnitude histogram entropy
    )
    robust: str = "charbonnier"  # affine: robust residual charbonnier | huber | l2
    robust_scale: float = 0.5  # ... its scale in pixels of the loss map (charbonnier epsilon, huber delta)
    ridge: float = 1e-4  # affine: ridge on the normal equations, relative to the segment's weight
    bins: int = 16  # entropy: histogram bins over [0, the crop's largest flow magnitude]
    loss_size: int = 64  # the loss is computed on segments and flow resized to this side


@dataclass
class HeadsConfig:
    mask: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    embedding: EmbeddingHeadConfig = field(default_factory=EmbeddingHeadConfig)
    segments: SegmentsHeadConfig = field(default_factory=SegmentsHeadConfig)

    def extra(self) -> list[str]:
        """The enabled heads besides the mask, in output order."""
        return [n for n in ("embedding", "segments") if getattr(self, n).enabled]

    def checks(self) -> list[tuple[str, bool, str]]:
        m, e, s = self.mask, self.embedding, self.segments
        return [
            (
                "heads.mask.enabled",
                m.enabled,
                "true (the mask head is the model's output; scale its loss with heads.mask.weight)",
            ),
            ("heads.mask.weight", m.weight >= 0, ">= 0"),
            ("heads.embedding.weight", e.weight >= 0, ">= 0"),
            ("heads.embedding.dim", 2 <= e.dim <= 4096, "between 2 and 4096"),
            ("heads.embedding.hidden", 1 <= e.hidden <= 8192, "between 1 and 8192"),
            ("heads.embedding.margin", 0 < e.margin <= 2, "in (0, 2] (cosine distances lie in [0, 2])"),
            ("heads.embedding.hard_negatives", e.hard_negatives >= 1, ">= 1"),
            ("heads.embedding.warmup_steps", e.warmup_steps >= 0, ">= 0"),
            (
                "heads.embedding.patch",
                32 <= e.patch <= 512 and e.patch % 32 == 0,
                "a multiple of 32 between 32 and 512",
            ),
            ("heads.embedding.pairs", 2 <= e.pairs <= 4096, "between 2 and 4096"),
            ("heads.segments.weight", s.weight >= 0, ">= 0"),
            ("heads.segments.count", 2 <= s.count <= 64, "between 2 and 64"),
            ("heads.segments.loss", s.loss in SEGMENT_LOSSES, " or ".join(SEGMENT_LOSSES)),
            ("heads.segments.robust", s.robust in ROBUST_LOSSES, " or ".join(ROBUST_LOSSES)),
            ("heads.segments.robust_scale", s.robust_scale > 0, "> 0"),
            ("heads.segments.ridge", 0 < s.ridge <= 1, "in (0, 1]"),
            ("heads.segments.bins", 2 <= s.bins <= 256, "between 2 and 256"),
            ("heads.segments.loss_size", 8 <= s.loss_size <= 1024, "between 8 and 1024"),
        ]


@dataclass
class LearnerConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    heads: HeadsConfig = field(
        default_factory=HeadsConfig
    )  # the mask head and the optional multi-task heads (learner/heads.py)
    enabled: bool = False  # `motionmask run`: a learner process trains on the daemon's ring buffer
    run_dir: str = "runs/daemon"  # ... its checkpoints and logs; a restart resumes from there
    # Across machines (docs/protocol.md, "Training samples between machines"): a rig with
    # enabled: false sends its samples to `remote`; `motionmask learn` takes them in on `listen`.
    remote: str = ""  # rig: the learner's learner.listen, e.g. tcp://gpu-box:5562; "" = samples stay here
    listen: str = DEFAULT_LISTEN  # `motionmask learn`: where rigs send samples (tcp://*:5562 for every interface)
    transport: TransportConfig = field(default_factory=TransportConfig)

    @property
    def crop_size(self) -> int:
        return self.crops.resolved_size(self.model.backbone)

    def validate(self) -> None:
        """Raise ValueError naming the key for values no type check catches."""
        sections = (
            self.model.checks()
            + self.crops.checks(self.model.backbone)
            + self.train.checks()
            + self.checkpoint.checks()
            + self.samples.checks()
            + self.bootstrap.checks()
        )
        check("learner", sections + self._checks() + self.heads.checks() + self.transport.checks())

    def _checks(self) -> list[tuple[str, bool, str]]:
        """The learner's own keys (where its checkpoints go, where its samples come from)."""
        tr, batch = self.transport, self.train.batch
        return [
            ("run_dir", bool(self.run_dir.strip()), "a folder, e.g. runs/daemon"),
            (
                "remote",
                not self.remote or "://" in self.remote,
                "empty or a ZeroMQ endpoint such as tcp://gpu-box:5562",
            ),
            (
                "remote",
                not (self.remote and self.enabled),
                "empty when learner.enabled is true (a rig whose "
                "samples go to a remote learner sets learner.enabled: false)",
            ),
            ("listen", "://" in self.listen, "a ZeroMQ endpoint such as tcp://127.0.0.1:5562"),
            (
                "transport.tolerance",
                not tr.samples_per_insert or tr.tolerance >= max(batch, tr.samples_per_insert),
                f">= learner.train.batch ({batch}) and >= transport.samples_per_insert: a whole batch and one "
                f"insert must fit in the slack",
            ),
        ]


def learner_config_from_dict(data: dict) -> LearnerConfig:
    """The LearnerConfig saved in a checkpoint (dataclasses.asdict). Keys this version does not
    know are ignored, so that checkpoints of a newer minor version still load for inference."""

    def build(cls, d):
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for k, v in (d or {}).items():
            if k not in known:
                continue
            sub = _SECTIONS.get((cls, k))
            kwargs[k] = build(sub, v) if sub is not None else v
        return cls(**kwargs)

    return build(LearnerConfig, data)


_SECTIONS = {
    (LearnerConfig, "model"): ModelConfig,
    (LearnerConfig, "crops"): CropConfig,
    (LearnerConfig, "train"): TrainConfig,
    (LearnerConfig, "checkpoint"): CheckpointConfig,
    (LearnerConfig, "samples"): SamplesConfig,
    (LearnerConfig, "bootstrap"): BootstrapConfig,
    (LearnerConfig, "heads"): HeadsConfig,
    (HeadsConfig, "mask"): MaskHeadConfig,
    (HeadsConfig, "embedding"): EmbeddingHeadConfig,
    (HeadsConfig, "segments"): SegmentsHeadConfig,
    (LearnerConfig, "transport"): TransportConfig,
}
