"""Random affine distortions on the device (Koch, Zemel & Salakhutdinov 2015, section 4.1).

Koch et al. augment every training pair with a random affine map T = (theta, rho_x, rho_y, s_x, s_y, t_x, t_y):
rotation theta in [-10, 10] degrees, shear rho in [-0.3, 0.3], scale s in [0.8, 1.2], translation t in [-2, 2]
pixels (on 105x105 images), each component switched on with probability 1/2 (off: its identity value).

[`random_affine`][metalearn.augment.random_affine] draws those parameters for a batch of images with a
``torch.Generator`` (a handful of
numbers per image) and warps all images at once with ``F.affine_grid`` + ``F.grid_sample`` where the images
live; no Python loop over images, no host sync.  Bilinear sampling is a convex combination of input pixels
(and of ``fill``), so distorted images stay inside the input's value range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AffineRanges:
    """Ranges of Koch's distortions (the defaults are the paper's).

    Attributes:
        rotation: Degrees, uniform in [-rotation, rotation].
        shear: Uniform in [-shear, shear], x and y independently.
        scale: (low, high), uniform, x and y independently.
        translate: Pixels at ``reference_size``, uniform in [-translate, translate]; scales with the image (2 px
            at 105 px is 0.53 px at 28 px).
        reference_size: The image side ``translate`` is given at.
        p: Probability that each component is applied.
    """
    rotation: float = 10.0                 # degrees, uniform in [-rotation, rotation]
    shear: float = 0.3                     # uniform in [-shear, shear], x and y independently
    scale: tuple = (0.8, 1.2)              # uniform, x and y independently
    translate: float = 2.0                 # pixels at reference_size, uniform in [-translate, translate]
    reference_size: int = 105
    p: float = 0.5

    def __post_init__(self) -> None:
        if self.rotation < 0 or self.shear < 0 or self.translate < 0:
            raise ValueError(f"rotation, shear, translate: expected >= 0, got {self.rotation}, {self.shear}, "
                             f"{self.translate}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale: expected (low, high) with 0 < low <= high, got {self.scale}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {self.p}")
        if self.reference_size < 1:
            raise ValueError(f"reference_size: expected >= 1, got {self.reference_size}")


KOCH = AffineRanges()


def affine_matrices(n: int, ranges: AffineRanges = KOCH, size: tuple[int, int] = (105, 105), *,
                    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` random 2x3 matrices in ``F.affine_grid``'s normalised coordinates, on the generator's device.

    A = R(theta) @ Shear(rho_x, rho_y) @ Scale(s_x, s_y), plus translation; each component is the identity with
    probability 1 - ``ranges.p``.

    Args:
        n: The number of matrices.
        ranges: The ranges of the distortions.
        size: (H, W) of the images; converts pixel translations.
        generator: The generator of the draws (default: the global CPU one).
        dtype: The dtype of the matrices.

    Returns:
        (n, 2, 3) matrices.
    """
    dev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, 7, generator=generator, device=dev, dtype=dtype)          # the parameters
    on = torch.rand(n, 4, generator=generator, device=dev, dtype=dtype) < ranges.p  # rot, shear, scale, shift
    theta = torch.where(on[:, 0], (2 * u[:, 0] - 1) * math.radians(ranges.rotation), torch.zeros_like(u[:, 0]))
    rho = torch.where(on[:, 1:2], (2 * u[:, 1:3] - 1) * ranges.shear, torch.zeros_like(u[:, 1:3]))
    lo, hi = ranges.scale
    s = torch.where(on[:, 2:3], lo + (hi - lo) * u[:, 3:5], torch.ones_like(u[:, 3:5]))
    h, w = size
    px = ranges.translate * torch.tensor([w, h], device=dev, dtype=dtype) / ranges.reference_size
    t = torch.where(on[:, 3:4], (2 * u[:, 5:7] - 1) * px * 2 / torch.tensor([w, h], device=dev, dtype=dtype),
                    torch.zeros_like(u[:, 5:7]))                                    # pixels -> [-1, 1] units
    c, sn = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([c, -sn], -1), torch.stack([sn, c], -1)], -2)    # (n, 2, 2)
    one = torch.ones_like(rho[:, 0])
    shear = torch.stack([torch.stack([one, rho[:, 0]], -1), torch.stack([rho[:, 1], one], -1)], -2)
    a = rot @ shear @ torch.diag_embed(s)
    return torch.cat([a, t[..., None]], dim=-1)


def warp(x: Tensor, matrices: Tensor, fill: float | None = None) -> Tensor:
    """Apply 2x3 matrices to images: output pixel p samples the input at A p + t (normalised coordinates).

    Args:
        x: (M, C, H, W) images.
        matrices: (M, 2, 3) matrices.
        fill: The value outside the image (None: the nearest border pixel).

    Raises:
        ValueError: Shapes other than (M, C, H, W) and (M, 2, 3).
    """
    if x.dim() != 4 or matrices.shape != (x.shape[0], 2, 3):
        raise ValueError(f"x, matrices: expected (M, C, H, W) and (M, 2, 3), got {tuple(x.shape)} and "
                         f"{tuple(matrices.shape)}")
    grid = F.affine_grid(matrices.to(x.dtype), list(x.shape), align_corners=False)
    if fill is None:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def random_affine(x: Tensor, ranges: AffineRanges = KOCH, *, generator: torch.Generator | None = None,
                  fill: float | None = None) -> Tensor:
    """Koch's random affine distortion of every image in x (..., C, H, W) -> a new tensor of the same shape.

    The warp runs where x lives.  x is not modified.

    Args:
        x: (..., C, H, W) images.
        ranges: The ranges of the distortions.
        generator: The generator the parameters are drawn with, on its own device (default CPU: a few numbers per
            image); they are moved to x's device.
        fill: The value outside the image (None: the nearest border pixel).

    Raises:
        ValueError: ``x`` has fewer than 4 dimensions.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = random_affine(torch.rand(8, 1, 28, 28), generator=g, fill=1.0)   # Omniglot: white background
    """
    if x.dim() < 4:
        raise ValueError(f"x: expected (..., C, H, W), got {tuple(x.shape)}")
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    flat = x.reshape(-1, c, h, w)
    m = affine_matrices(flat.shape[0], ranges, (h, w), generator=generator).to(x.device, non_blocking=True)
    return warp(flat, m, fill).reshape(*lead, c, h, w)
