"""CIFAR-10-C corruptions (metalearn.data.corruptions): contract (shape, dtype, range, determinism), severity
ordering on natural-ish images, checks against exact answers (Pillow BOX resize, HSV brightness, statistics of
the noises, the motion-blur kernel) and bad input. Tiny inputs only."""
from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn.data.corruptions import CORRUPTIONS, PARAMS, corrupt, frost_texture

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform"}
# MAD from the clean image follows the reference parameter tables, which are not monotone for these three:
#   elastic_transform: the random affine shrinks with severity (0.08 -> 0.03 x side) while the local field grows;
#   glass_blur: severities 1-3 shuffle once, 4-5 twice, and the stronger Gaussian of 3 (and 5) smooths some back;
#   frost: the image weight drops (1 -> 0.75) while the frost weight rises (0.2 -> 0.45).
NOT_MONOTONE = {"elastic_transform", "glass_blur", "frost"}


def natural_images(n: int = 4, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Natural-ish images: 1/f-spectrum noise with correlated colour channels, uint8 (n, 3, h, w)."""
    g = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(h, 1)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64).view(1, -1)
    f = torch.sqrt(fx ** 2 + fy ** 2).clamp_min(1.0 / max(h, w))
    spec = torch.randn(n, 3, h, fx.shape[1], 2, generator=g, dtype=torch.float64)
    field = torch.fft.irfft2(torch.view_as_complex(spec) / f, s=(h, w))
    field = field + 0.5 * field.mean(1, keepdim=True)
    lo, hi = field.amin((1, 2, 3), keepdim=True), field.amax((1, 2, 3), keepdim=True)
    return ((0.1 + 0.8 * (field - lo) / (hi - lo)) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def rand8() -> torch.Tensor:
    return torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def nat() -> torch.Tensor:
    return natural_images()


def _mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().mean().item()


def test_standard_order_and_tables():
    assert CORRUPTIONS == ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                           "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                           "elastic_transform", "pixelate", "jpeg_compression")
    assert set(PARAMS) == set(CORRUPTIONS) and all(len(v) == 5 for v in PARAMS.values())
    assert PARAMS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert [len(z) for z in PARAMS["zoom_blur"]] == [7, 12, 16, 21, 26]  # np.arange(1, 1.06, .01) etc.


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_contract_uint8(name, rand8, nat):
    for x in (rand8, nat):
        for s in (1, 5):
            y = corrupt(x, name, s, seed=0)
            assert y.shape == x.shape and y.dtype == torch.uint8 and y.device == x.device
            assert not torch.equal(y, x) or name == "jpeg_compression" and x is rand8  # noise JPEG can round-trip
            assert torch.equal(corrupt(x, name, s, seed=0), y)  # deterministic
    assert torch.equal(x, natural_images())  # input not modified


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_float_and_single_image(name, dtype, nat):
    x = nat.to(dtype) / 255
    y = corrupt(x, name, 3, seed=2)
    assert y.shape == x.shape and y.dtype == dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 and torch.isfinite(y).all()
    one = corrupt(nat[0], name, 3, seed=2)
    assert one.shape == (3, 32, 32) and one.dtype == torch.uint8
    if name in ("jpeg_compression", "pixelate", "contrast", "brightness", "defocus_blur", "zoom_blur"):
        # deterministic ones: float and uint8 paths agree up to the final 8-bit cut
        y8 = corrupt(nat, name, 3)
        assert (y * 255 - y8.to(dtype)).abs().max() <= 1.0 + 1e-6


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_seed_changes_random_corruptions(name, nat):
    a, b = corrupt(nat, name, 4, seed=0), corrupt(nat, name, 4, seed=1)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - RANDOM))
def test_deterministic_corruptions_ignore_seed(name, nat):
    assert torch.equal(corrupt(nat, name, 4, seed=0), corrupt(nat, name, 4, seed=7))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_increases_change(name, nat):
    mad = [_mad(corrupt(nat, name, s, seed=0), nat) for s in range(1, 6)]
    assert min(mad) > 0.5, mad  # every level visibly changes the image
    assert len({round(m, 6) for m in mad}) >= 4 or name == "motion_blur", mad  # the levels differ
    if name not in NOT_MONOTONE:
        assert all(b >= a - 1e-9 for a, b in zip(mad, mad[1:])), mad  # non-decreasing
        assert mad[4] > 1.2 * mad[0], mad  # and an overall increase
    elif name == "glass_blur":
        assert min(mad[3:]) > max(mad[:3]), mad  # two shuffle passes change more than one
    elif name == "frost":
        assert min(mad[1:]) > mad[0], mad
    else:  # elastic: every level distorts, and differently from the others
        outs = [corrupt(nat, name, s, seed=0) for s in range(1, 6)]
        assert all(not torch.equal(a, b) for i, a in enumerate(outs) for b in outs[i + 1:])


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_other_sizes(name):
    x = natural_images(2, 40, 48, seed=3)
    y = corrupt(x, name, 5, seed=0)
    assert y.shape == x.shape and y.dtype == torch.uint8


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_batch_composition_does_not_leak(name, nat):
    """Image i depends on (seed, N, i) and its own pixels only: changing the other images leaves it unchanged."""
    first, last = nat.clone(), nat.clone()
    first[1:] = 255 - first[1:]
    last[:-1] = 255 - last[:-1]
    ref = corrupt(nat, name, 3)
    assert torch.equal(corrupt(first, name, 3)[0], ref[0])
    assert torch.equal(corrupt(last, name, 3)[-1], ref[-1])


# ----------------------------------------------------------------------------- exact answers
def test_pixelate_matches_pillow_box(rand8):
    for s in range(1, 6):
        c = PARAMS["pixelate"][s - 1]
        ref = []
        for img in rand8:
            im = Image.fromarray(img.permute(1, 2, 0).numpy().copy())
            im = im.resize((int(32 * c), int(32 * c)), Image.BOX).resize((32, 32), Image.BOX)
            ref.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
        diff = (corrupt(rand8, "pixelate", s).int() - torch.stack(ref).int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.5  # Pillow rounds to 8 bits between its two passes


def test_brightness_is_hsv_value_shift(nat):
    x = nat[:1].double() / 255
    y = corrupt(x, "brightness", 4)
    c = PARAMS["brightness"][3]
    for i, j in ((0, 0), (5, 17), (31, 9)):
        h, s, v = colorsys.rgb_to_hsv(*x[0, :, i, j].tolist())
        assert y[0, :, i, j].tolist() == pytest.approx(colorsys.hsv_to_rgb(h, s, min(v + c, 1.0)), abs=1e-12)
    black = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(corrupt(black, "brightness", 5), torch.full_like(black, PARAMS["brightness"][4]))


def test_contrast_keeps_channel_means(nat):
    x = nat.double() / 255
    y = corrupt(x, "contrast", 2)
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=1e-3)  # (tiny clipping only)
    assert y.std((2, 3)).div(x.std((2, 3))).sub(0.5).abs().max() < 0.02


def test_noise_statistics():
    grey = torch.full((16, 3, 32, 32), 0.5, dtype=torch.float64)
    for s in range(1, 6):
        c = PARAMS["gaussian_noise"][s - 1]
        assert (corrupt(grey, "gaussian_noise", s) - 0.5).std().item() == pytest.approx(c, rel=0.05)
        lam = PARAMS["shot_noise"][s - 1]
        assert corrupt(grey, "shot_noise", s).var().item() == pytest.approx(0.5 / lam, rel=0.08)
        p = PARAMS["impulse_noise"][s - 1]
        y = corrupt(grey, "impulse_noise", s)
        hit = (y != 0.5)
        assert hit.double().mean().item() == pytest.approx(p, rel=0.15)
        assert set(torch.unique(y[hit]).tolist()) <= {0.0, 1.0}


def test_motion_blur_kernel_on_a_point():
    """A single white pixel on black spreads along a line, total mass kept, Gaussian weights decreasing."""
    x = torch.zeros(1, 3, 33, 33, dtype=torch.float64)
    x[0, :, 16, 16] = 1.0
    y = corrupt(x, "motion_blur", 1)
    assert y.sum().item() == pytest.approx(3.0, rel=1e-9)
    row = y[0, 0]
    vals = sorted(row[row > 1e-9].tolist(), reverse=True)
    w = [math.exp(-i * i / 2.0) for i in range(13)]  # radius 6 -> 13 taps, sigma 1
    assert vals[:3] == pytest.approx([v / sum(w) for v in w[:3]], rel=1e-6)


def test_zoom_blur_keeps_flat_images():
    flat = torch.full((2, 3, 32, 32), 0.25, dtype=torch.float64)
    assert torch.allclose(corrupt(flat, "zoom_blur", 5), flat)
    assert torch.allclose(corrupt(flat, "defocus_blur", 5), flat)
    assert torch.allclose(corrupt(flat, "pixelate", 5), flat)


def test_frost_texture_seeded_and_in_range():
    a, b = frost_texture(3, 32, 32, seed=4), frost_texture(3, 32, 32, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, frost_texture(3, 32, 32, seed=5))
    assert a.shape == (3, 3, 32, 32) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert 0.2 < a.mean().item() < 0.8 and a.std().item() > 0.05  # a textured, mid-to-bright layer


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [torch.zeros(2, 1, 32, 32, dtype=torch.uint8),
                                 torch.zeros(2, 4, 32, 32, dtype=torch.uint8),
                                 torch.zeros(32, 32, dtype=torch.uint8),
                                 torch.zeros(1, 2, 3, 32, 32, dtype=torch.uint8),
                                 torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
                                 torch.zeros(2, 3, 32, 32, dtype=torch.int32)])
def test_bad_images(bad):
    with pytest.raises(ValueError, match="images"):
        corrupt(bad, "fog", 1)


def test_bad_float_range_and_type():
    with pytest.raises(ValueError, match=r"images: float images must lie in \[0, 1\]"):
        corrupt(torch.full((1, 3, 32, 32), 2.0), "contrast", 1)
    with pytest.raises(ValueError, match="images"):
        corrupt(torch.full((1, 3, 32, 32), float("nan")), "contrast", 1)
    with pytest.raises(TypeError, match="images"):
        corrupt(np.zeros((1, 3, 32, 32), np.uint8), "contrast", 1)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True, "3", None])
def test_bad_severity(severity, rand8):
    with pytest.raises(ValueError, match="severity"):
        corrupt(rand8, "fog", severity)


@pytest.mark.parametrize("name", ["Fog", "speckle_noise", "", None, "elastic"])
def test_unknown_name(name, rand8):
    with pytest.raises(ValueError, match="name: unknown corruption"):
        corrupt(rand8, name, 1)
