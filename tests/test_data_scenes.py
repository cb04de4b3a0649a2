import hashlib

import numpy as np
import pytest
from PIL import Image

from pdfnet_pipeline.data.sample import generate_sample
from pdfnet_pipeline.data.scenes import DEMO, HOLDOUT, make_scene


@pytest.mark.parametrize("family, kinds", [("demo", DEMO), ("holdout", HOLDOUT)])
def test_scenes_are_small_exact_and_separable(family, kinds):
    seen = set()
    for i in range(2 * len(kinds)):
        image, mask, kind = make_scene(family, 0, "DIS-TR", i)
        seen.add(kind)
        h, w = mask.shape
        assert image.shape == (h, w, 3) and h != w and 352 <= max(h, w) <= 480 and h % 8 == w % 8 == 0
        assert set(np.unique(mask)) == {0, 255}
        fg = mask > 0
        assert 0.01 < fg.mean() < 0.5, (kind, fg.mean())
        # The object is saturated, the far plane muted: HSV saturation separates them on average
        # (what makes the scenes learnable in minutes), though not pixel by pixel.
        rgb = image.astype(np.float32)
        sat = (rgb.max(-1) - rgb.min(-1)) / np.maximum(rgb.max(-1), 1)
        assert sat[fg].mean() > 0.45 > 0.3 > sat[~fg].mean(), (kind, sat[fg].mean(), sat[~fg].mean())
    assert seen == set(kinds)


def test_families_draw_different_objects_and_splits_differ():
    assert not set(DEMO) & set(HOLDOUT)
    a, _, _ = make_scene("demo", 0, "DIS-TR", 0)
    b, _, _ = make_scene("demo", 0, "DIS-VD", 0)
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_demo_sample_is_deterministic(tmp_path):
    a = generate_sample(tmp_path / "a", per_split=1, train=2, seed=3, style="demo")
    b = generate_sample(tmp_path / "b", per_split=1, train=2, seed=3, style="demo")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert [digest(p) for p in a] == [digest(p) for p in b] and len(a) == 7
    assert Image.open(a[0]).size[::-1] == np.asarray(Image.open(str(a[0]).replace("/im/", "/gt/")[:-4] + ".png")).shape
    with pytest.raises(ValueError, match="unknown sample style 'x'"):
        generate_sample(tmp_path / "c", style="x")


def test_studio_scenes_turn_the_demo_round():
    """studio: the holdout objects dark on a pale backdrop, every scene (the demo: bright on dark)."""
    luma = np.array([0.299, 0.587, 0.114])
    for i in range(2 * len(HOLDOUT)):
        image, mask, kind = make_scene("studio", 0, "folder", i)
        assert kind in HOLDOUT and set(np.unique(mask)) == {0, 255}
        y = image.astype(np.float32) @ luma / 255
        fg = mask > 0
        assert y[fg].max() < 0.45 < 0.6 < y[~fg].min(), (kind, y[fg].max(), y[~fg].min())
        demo, demo_mask, _ = make_scene("demo", 0, "folder", i)
        yd = demo.astype(np.float32) @ luma / 255
        assert yd[demo_mask > 0].mean() > yd[demo_mask == 0].mean()  # the other way round
