"""Superpixels on real photos, the nearest-neighbour search, and the online vote."""

from __future__ import annotations

from dataclasses import fields

import cv2
import numpy as np
import pytest
import skimage.data

from streamer.config import MotionConfig
from streamer.motion.superpixels import COLOR_BINS, ORIENT_BINS, SuperpixelExtractor
from streamer.motion.voting import OnlineVoter, VoteParams, nearest_others

W, H = 240, 180


def _photo(name: str, w: int = W, h: int = H) -> np.ndarray:
    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("method", ["seeds", "slic"])
def test_superpixels_cover_the_image_consistently(method):
    sp = SuperpixelExtractor(method, 800)(_photo("astronaut"))
    assert sp.labels.shape == (H, W) and sp.labels.dtype == np.int32
    assert sp.labels.min() >= 0 and sp.labels.max() == sp.n - 1
    assert 300 <= sp.n <= 1200  # about the requested 800 (SEEDS rounds to its block grid)
    assert np.array_equal(sp.area, np.bincount(sp.labels.ravel(), minlength=sp.n))
    assert sp.area.sum() == H * W
    # centroids are the mean pixel positions
    ys, xs = np.mgrid[0:H, 0:W]
    for i in np.flatnonzero(sp.area)[:: max(1, sp.n // 25)]:
        m = sp.labels == i
        assert np.allclose(sp.centroid[i], [xs[m].mean(), ys[m].mean()], atol=1e-3)
    # features: sqrt of normalised histograms, so each histogram block has unit L2 norm
    assert sp.features.shape == (sp.n, 3 * COLOR_BINS + ORIENT_BINS)
    assert np.isfinite(sp.features).all()
    nonempty = sp.area > 0
    for c in range(3):
        norms = np.square(sp.features[nonempty, c * COLOR_BINS : (c + 1) * COLOR_BINS]).sum(axis=1)
        assert np.allclose(norms, 1.0, atol=1e-4)
    # orientation: unit norm, or all zero where a superpixel has no gradient at all (saturated)
    norms = np.square(sp.features[nonempty, 3 * COLOR_BINS :]).sum(axis=1)
    assert np.all((np.abs(norms - 1.0) < 1e-4) | (norms == 0.0))
    assert (norms > 0).mean() > 0.9


@pytest.mark.parametrize("method", ["seeds", "slic"])
def test_superpixels_follow_a_strong_edge(method):
    edge = 124  # not on SEEDS' 8-px block grid
    img = np.concatenate([_photo("astronaut")[:, :edge], _photo("chelsea")[:, edge:]], axis=1)
    sp = SuperpixelExtractor(method, 800)(img)

    def wrong_side(labels: np.ndarray, n: int) -> float:
        left = np.bincount(labels[:, :edge].ravel(), minlength=n)
        right = np.bincount(labels[:, edge:].ravel(), minlength=n)
        return float(np.minimum(left, right).sum()) / labels.size

    grid = (np.arange(H)[:, None] // 8) * (W // 8 + 1) + np.arange(W)[None] // 8
    assert wrong_side(sp.labels, sp.n) < 0.4 * wrong_side(grid, int(grid.max()) + 1)


def test_pool_and_paint_round_trip():
    sp = SuperpixelExtractor("seeds", 800)(_photo("coffee"))
    rng = np.random.default_rng(0)
    per_sp = rng.random(sp.n).astype(np.float32)
    painted = sp.paint(per_sp)
    assert painted.shape == (H, W) and painted.dtype == np.float32
    nonempty = sp.area > 0
    assert np.allclose(sp.pool(painted)[nonempty], per_sp[nonempty], atol=1e-6)
    # pooling a pixel map is the mean over each superpixel (weighted: the weighted mean)
    pix = rng.random((H, W)).astype(np.float32)
    wts = rng.random((H, W)).astype(np.float32)
    pooled, wpooled = sp.pool(pix), sp.pool(pix, wts)
    for i in np.flatnonzero(nonempty)[::40]:
        m = sp.labels == i
        assert pooled[i] == pytest.approx(pix[m].mean(), abs=1e-5)
        assert wpooled[i] == pytest.approx((pix[m] * wts[m]).sum() / wts[m].sum(), abs=1e-5)


def test_seeds_follows_a_change_of_frame_size():
    ex = SuperpixelExtractor("seeds", MotionConfig().num_superpixels)  # what the pipeline uses
    assert ex(_photo("coffee", 160, 120)).labels.shape == (120, 160)
    assert ex(_photo("coffee", 240, 180)).labels.shape == (180, 240)
    assert ex(_photo("coffee", 160, 120)).labels.shape == (120, 160)


def test_nearest_others_matches_brute_force_and_skips_self():
    rng = np.random.default_rng(1)
    pool = rng.random((900, 34)).astype(np.float32)
    nq, k = 200, 16
    idx, d2 = nearest_others(pool[:nq], pool, k)
    assert idx.shape == (nq, k) and d2.shape == (nq, k)
    full = np.square(pool[:nq, None, :] - pool[None, :, :]).sum(axis=2)
    full[np.arange(nq), np.arange(nq)] = np.inf  # a query is never its own neighbour
    truth = np.argsort(full, axis=1)[:, :k]
    assert not (idx == np.arange(nq)[:, None]).any()
    assert all(set(a) == set(b) for a, b in zip(idx, truth))
    assert np.allclose(np.sort(d2, axis=1), np.take_along_axis(full, truth, axis=1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [20, 67, 1003])
def test_nearest_others_finds_neighbours_in_every_block_including_the_remainder(size: int):
    # 1003 rows are 125 blocks of 8 and a remainder of 3: the query's three copies are put there
    rng = np.random.default_rng(size)
    pool = rng.random((size, 34)).astype(np.float32)
    pool[-3:] = pool[0]
    k = min(16, size - 1)
    idx, d2 = nearest_others(pool[:5], pool, k)
    assert {size - 3, size - 2, size - 1} <= set(idx[0]) and np.allclose(np.sort(d2[0])[:3], 0.0)
    full = np.square(pool[:5, None, :] - pool[None, :, :]).sum(axis=2)
    full[np.arange(5), np.arange(5)] = np.inf
    assert np.allclose(np.sort(d2, axis=1), np.sort(full, axis=1)[:, :k], rtol=1e-4, atol=1e-5)


def test_nearest_others_with_exact_duplicates_never_returns_self():
    rng = np.random.default_rng(2)
    x = rng.random((50, 8)).astype(np.float32)
    pool = np.concatenate([x, x, x])  # every query has two copies at distance 0
    idx, d2 = nearest_others(x, pool, 2)
    n = np.arange(50)[:, None]
    assert not (idx == n).any()
    assert np.array_equal(np.sort(idx, axis=1), np.concatenate([n + 50, n + 100], axis=1))
    assert np.allclose(d2, 0.0)


# -- the online vote ---------------------------------------------------------------------------
SMALL_W, SMALL_H = 160, 120
BACKGROUND = _photo("grass", SMALL_W, SMALL_H)
OBJECT = cv2.resize(skimage.data.coffee()[100:300, 200:450], (40, 36), interpolation=cv2.INTER_AREA)


def _voter(**overrides) -> OnlineVoter:
    m = MotionConfig()  # the pipeline's defaults, for every vote parameter the config has
    shared = {f.name: getattr(m, f.name) for f in fields(VoteParams) if hasattr(m, f.name)}
    return OnlineVoter(VoteParams(**{**shared, **overrides}))


def _scene(x: int, y: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A textured object (a cup) at (x, y) on grass; also its pixel mask."""
    img = BACKGROUND.copy()
    img[y : y + 36, x : x + 40] = OBJECT
    mask = np.zeros((SMALL_H, SMALL_W), np.float32)
    mask[y : y + 36, x : x + 40] = 1.0
    return img, mask


def _play(voter: OnlineVoter, xs: list[int], moving: list[bool]) -> list[tuple[float, float]]:
    """Push frames of the object at x positions; raw saliency is its coverage while it moves and
    0 when it pauses. Returns (mean voted value on the object, max on the background) per frame."""
    ex = SuperpixelExtractor("seeds", MotionConfig().num_superpixels)  # what the pipeline uses
    out = []
    for x, mov in zip(xs, moving):
        img, mask = _scene(x)
        sp = ex(img)
        cover = sp.pool(mask)
        saliency = (cover if mov else np.zeros(sp.n)).astype(np.float32)
        voted = voter.vote(sp, saliency, np.ones(sp.n, np.float32))
        assert voted.shape == (sp.n,) and voted.min() >= 0.0 and voted.max() <= 1.0
        out.append((float(voted[cover > 0.9].mean()), float(voted[cover < 0.01].max())))
    return out


def test_object_that_pauses_stays_foreground_for_a_while():
    xs = [20 + 3 * i for i in range(6)] + [35] * 6
    moving = [True] * 6 + [False] * 6
    values = _play(_voter(), xs, moving)
    assert all(obj > 0.75 for obj, _ in values[:6])  # the background prior (motion.prior) keeps it under 1
    # paused: raw saliency is 0, the remembered motion of what looks the same keeps it foreground
    assert all(obj > 0.55 for obj, _ in values[6:9])
    # ... fading as the memory ages, never growing
    paused = [obj for obj, _ in values[6:]]
    assert all(b <= a + 1e-6 for a, b in zip(paused, paused[1:]))
    assert all(bg < 0.1 for _, bg in values)


def test_reset_forgets_the_history():
    voter = _voter()
    _play(voter, [20, 23, 26, 29, 32], [True] * 5)
    voter.reset()
    ((obj, bg),) = _play(voter, [32], [False])
    assert obj < 0.05 and bg < 0.05


def test_without_history_a_pause_is_background():
    values = _play(_voter(history=0), [20, 23, 26, 29, 29], [True] * 4 + [False])
    assert values[3][0] > 0.75 and values[4][0] < 0.05


def test_isolated_one_frame_blip_is_suppressed():
    ex = SuperpixelExtractor("seeds", MotionConfig().num_superpixels)  # what the pipeline uses
    voter = _voter()
    voted_blip = []
    for t in range(8):
        sp = ex(BACKGROUND)
        saliency = np.zeros(sp.n, np.float32)
        reliability = np.ones(sp.n, np.float32)
        blip = int(np.argmin(np.hypot(sp.centroid[:, 0] - 120, sp.centroid[:, 1] - 60)))
        if t == 5:
            saliency[blip] = 1.0  # one background superpixel "moves" for one frame
        voted = voter.vote(sp, saliency, reliability)
        voted_blip.append(float(voted[blip]))
        others = np.delete(voted, blip)
        assert float(others.max()) < 0.05  # never spreads to the look-alike background
    # a fully reliable measurement keeps its own say, but the still history and neighbours halve it
    assert voted_blip[5] < 0.6
    assert voted_blip[6] < 0.1  # and it is gone the next frame
    # a less reliable blip (flow confidence x texture below 1) drops under the 0.5 threshold
    voter.reset()
    for t in range(6):
        sp = ex(BACKGROUND)
        saliency = np.zeros(sp.n, np.float32)
        reliability = np.ones(sp.n, np.float32)
        if t == 5:
            saliency[blip], reliability[blip] = 1.0, 0.7
        voted = voter.vote(sp, saliency, reliability)
    assert float(voted[blip]) < 0.5
