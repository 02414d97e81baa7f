"""The Omniglot bundled with the package: contents, the licence beside it, and pixel equality with the full data."""
import os

import numpy as np
import pytest
import torch

from metalearn.data.bundled import BUNDLE, BUNDLE_DIR, binarize, load_bundled


def test_bundle_shapes_names_and_licence():
    assert BUNDLE.stat().st_size < 1_200_000                     # about 1 MB
    assert "MIT License" in (BUNDLE_DIR / "LICENSE-omniglot.txt").read_text()
    bg, ev = load_bundled("background"), load_bundled("evaluation")
    assert (bg.num_base_classes, ev.num_base_classes) == (964, 659)
    assert bg.images.shape == (964 * 20, 1, 28, 28) and bg.images.dtype == torch.uint8
    assert set(torch.unique(bg.images).tolist()) == {0, 255}     # one bit a pixel, paper 255 / ink 0
    assert not {n.split("/")[0] for n in bg.names} & {n.split("/")[0] for n in ev.names}
    assert len({n.split("/")[0] for n in bg.names}) == 30 and len({n.split("/")[0] for n in ev.names}) == 20
    ink = (bg.images == 0).float().mean().item()
    assert 0.03 < ink < 0.2                                       # strokes on paper, not inverted
    rot = load_bundled("evaluation", rotations=(0, 90))
    assert rot.num_classes == 2 * 659


def test_bad_part():
    with pytest.raises(ValueError, match="part"):
        load_bundled("train")


@pytest.mark.skipif(not os.environ.get("METALEARN_DATA"), reason="needs the full Omniglot (METALEARN_DATA)")
def test_bundle_matches_full_data_pixel_for_pixel(tmp_path):
    """Every bundled image equals the full-size npz resized by the loader (105 -> 28) and thresholded."""
    from metalearn.data.omniglot import load_omniglot
    full = load_omniglot(split="all", image_size=28, rotations=None, cache_dir=tmp_path)
    allb = load_bundled("all")
    assert allb.names == full.names
    expect = np.where(binarize(full.images.numpy()), 0, 255).astype(np.uint8)
    assert np.array_equal(allb.images.numpy(), expect)
