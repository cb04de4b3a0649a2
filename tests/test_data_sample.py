import hashlib

import numpy as np
from PIL import Image

from pdfnet_pipeline.data.sample import KINDS, generate_sample, make_sample


def test_sample_is_deterministic_and_exact(tmp_path):
    a = generate_sample(tmp_path / "a", per_split=1, train=2, seed=3)
    b = generate_sample(tmp_path / "b", per_split=1, train=2, seed=3)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert [digest(p) for p in a] == [digest(p) for p in b]
    assert len(a) == 2 + 5
    for p in a:
        mask = np.asarray(Image.open(str(p).replace("/im/", "/gt/").replace(".jpg", ".png")))
        assert set(np.unique(mask)) == {0, 255}  # exact binary mask
        assert mask.shape == Image.open(p).size[::-1]


def test_sample_objects_are_thin_and_non_square():
    seen = set()
    for i in range(len(KINDS)):
        image, mask, kind = make_sample(0, "DIS-TR", i)
        seen.add(kind)
        h, w = mask.shape
        assert h != w and 700 <= max(h, w) <= 1300 and h % 8 == 0 and w % 8 == 0
        fg = (mask > 0).mean()
        assert 0.005 < fg < 0.6, (kind, fg)
        # Foreground pixels are drawn in the object's colour: the image differs there from the
        # blurred background, so the mask is learnable from the pixels.
        assert image.shape == (h, w, 3)
    assert seen == set(KINDS)
    other, _, _ = make_sample(1, "DIS-TR", 0)
    assert other.shape != make_sample(0, "DIS-TR", 0)[0].shape or not np.array_equal(
        other, make_sample(0, "DIS-TR", 0)[0]
    )
