"""The browsable eval report (eval/index.html): thumbnails, error map, page content, and the page
itself in a real headless Chromium (loads without errors, all rows, sorting, the random label)."""

import html
import re
import time

import numpy as np
import pytest
from browser import CHROMIUM, Browser
from PIL import Image

from pdfnet_pipeline.eval.html import GalleryItem, error_map, write_index
from pdfnet_pipeline.eval.report import BeforeAfter, plot_curves
from pdfnet_pipeline.train.curve import plot_training_curve

LABEL = (  # provenance.random_label's wording
    "RANDOM-WEIGHT RUN: PDFNet (tiny preset) trained from random initial weights; depth maps from randomly "
    "initialised DAM v2: the numbers measure learning on this data, not a trained PDFNet on DIS-5K"
)
SPLITS = ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")


def _items(n: int, side: int, seed: int = 0) -> list[GalleryItem]:
    """Thin diagonal structures, predictions of varying quality, seeded metrics (no ties)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        h, w = (side * 2 // 3, side) if i % 2 else (side, side * 2 // 3)
        yy, xx = np.mgrid[:h, :w]
        gt = (((xx + 2 * yy + 3 * i) % 19) < 3).astype(np.uint8) * 255
        pred = np.clip(gt * rng.uniform(0.3, 1) + rng.normal(0, 25, gt.shape), 0, 255).astype(np.uint8)
        image = np.stack([gt // 2 + 60, np.full_like(gt, 90), (255 * xx // w).astype(np.uint8)], -1)
        metrics = {k: float(rng.uniform()) for k in ("max_f", "weighted_f", "s_measure", "mean_e")}
        metrics.update(mae=float(rng.uniform(0, 0.3)), hce=int(rng.integers(0, 10_000)))
        items.append(GalleryItem(SPLITS[i % 4], f"img {i:04d}", metrics, image, yy / h, gt, pred))
    return items


def _results(items):
    return {s: {"Fmax": 0.5, "Fw": 0.4, "Em": 0.6, "Sa": 0.55, "MAE": 0.1, "HCE": 300.0, "count": 3} for s in SPLITS}


def _with_before(items: list[GalleryItem]) -> list[GalleryItem]:
    """Each item's before-prediction: its GT at a third of the brightness (a weak model)."""
    return [GalleryItem(*(getattr(it, f) for f in ("split", "id", "metrics", "image", "depth", "gt", "pred")),
                        before=(np.asarray(it.gt) // 3).astype(np.uint8)) for it in items]  # fmt: skip


BEFORE = BeforeAfter(
    "before (initial weights, initial.safetensors)",
    "after (best checkpoint, best.safetensors)",
    "runs/x/initial.safetensors",
    "runs/x/best.safetensors",
    {"DIS-TE1": {"Fmax": 0.123, "Fw": 0.1, "Em": 0.2, "Sa": 0.3, "MAE": 0.456, "HCE": 999.0, "count": 3}},
    ["DIS-TE1"],
)


def _training_curve(out) -> None:
    steps = [{"kind": "step", "step": s, "loss": 1 / s} for s in range(1, 9)]
    epochs = [
        {"kind": "epoch", "epoch": e, "step": 4 * e + 4, "val_max_f": 0.3 + e / 4, "val_mae": 0.2} for e in range(2)
    ]
    plot_training_curve(steps + epochs, out / "training_curve.png", LABEL)


def test_error_map_marks_false_positives_red_and_misses_blue():
    gt = np.array([[255, 0], [255, 0]], np.uint8)
    pred = np.array([[255, 255], [0, 0]], np.uint8)
    got = error_map(gt, pred)
    assert got[0, 0].tolist() == [0, 0, 0] and got[1, 1].tolist() == [0, 0, 0]  # right
    assert got[0, 1].tolist() == [255, 0, 0]  # predicted, not in GT
    assert got[1, 0].tolist() == [0, 128, 255]  # GT missed
    assert error_map(np.array([[200]], np.uint8), np.array([[100]], np.uint8))[0, 0].tolist() == [0, 50, 100]


def test_thumbnails_keep_the_photo_aspect_and_content(tmp_path):
    gt = np.zeros((100, 300), np.uint8)
    gt[:, :150] = 255  # left half foreground
    square = np.zeros((1024, 1024, 3), np.uint8)  # store image: square; shown at the GT's aspect
    square[:, 512:] = (0, 0, 255)
    item = GalleryItem("DIS-VD", "wide", {"mae": 0.5}, square, np.full((1024, 1024), 0.25), gt, 255 - gt)
    Image.fromarray(gt).save(tmp_path / "gt.png")
    file_item = GalleryItem(
        "DIS-VD", "from files", {"mae": 0.1}, lambda: square, square[..., 2], tmp_path / "gt.png", gt
    )
    write_index(tmp_path / "eval", {}, [item, file_item])
    thumbs = tmp_path / "eval" / "thumbs"
    assert sorted(p.name for p in thumbs.iterdir()) == sorted(
        f"{i:05d}_{k}" for i in range(2) for k in ("image.jpg", "depth.jpg", "gt.png", "pred.png", "error.png")
    )
    for name in ("00000_gt.png", "00000_image.jpg", "00001_depth.jpg", "00001_error.png"):
        assert Image.open(thumbs / name).size == (144, 48), name
    gt_t = np.asarray(Image.open(thumbs / "00000_gt.png"))  # row 0: the worst (MAE 0.5)
    assert gt_t[:, :68].min() == 255 and gt_t[:, 76:].max() == 0
    image_t = np.asarray(Image.open(thumbs / "00000_image.jpg"))
    assert image_t[:, :64, 2].max() < 16 and image_t[:, 80:, 2].min() > 240  # JPEG: near, not exact
    assert abs(int(np.asarray(Image.open(thumbs / "00000_depth.jpg")).mean()) - 64) <= 1
    error_t = np.asarray(Image.open(thumbs / "00000_error.png"))  # prediction = inverted GT
    assert (error_t[:, :68] == [0, 128, 255]).all() and (error_t[:, 76:] == [255, 0, 0]).all()
    assert (np.asarray(Image.open(thumbs / "00001_error.png")) == 0).all()  # perfect prediction
    lazy = np.asarray(Image.open(thumbs / "00001_image.jpg"))  # the same square, read through a function
    assert np.abs(lazy.astype(int) - image_t).max() <= 2


def test_page_rows_worst_first_escaped_and_offline(tmp_path):
    items = _items(9, 24)
    odd = items[4]
    items[4] = GalleryItem(
        "DIS-TE1", '<b>"odd" & name</b>', dict(odd.metrics, mae=0.99), odd.image, odd.depth, odd.gt, odd.pred
    )
    out = tmp_path / "eval"
    write_index(out, _results(items), items, label=LABEL)
    page = (out / "index.html").read_text()
    ids = re.findall(r'<tr data-split="[^"]*" data-id="([^"]*)"', page)
    expected = [it.id for it in sorted(items, key=lambda it: -it.metrics["mae"])]
    assert [html.unescape(i) for i in ids] == expected and expected[0] == '<b>"odd" & name</b>'
    assert '<b>"odd"' not in page and "&lt;b&gt;&quot;odd&quot; &amp; name&lt;/b&gt;" in page
    assert page.count('loading="lazy"') == 5 * len(items)
    assert "<title>RANDOM WEIGHTS: PDFNet evaluation</title>" in page and f'role="alert">{LABEL}</div>' in page
    assert "http:" not in page and "https:" not in page  # nothing fetched from elsewhere
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(":" not in u and not u.startswith("/") for u in links)  # files beside the page
    write_index(out, _results(items), items[:2])  # a rerun with fewer images: no stale thumbnails, no label
    assert len(list((out / "thumbs").iterdir())) == 10
    page = (out / "index.html").read_text()
    assert 'id="random-label"' not in page and "RANDOM" not in page.split("<script>")[0]


def test_before_column_before_after_table_training_curve_and_graded_error_legend(tmp_path):
    items = _with_before(_items(4, 30))
    out = tmp_path / "eval"
    out.mkdir()
    _training_curve(out)
    write_index(out, _results(items), items, label=LABEL, before=BEFORE)
    page = (out / "index.html").read_text()
    worst = sorted(items, key=lambda it: -it.metrics["mae"])[0]
    before_thumb = np.asarray(Image.open(out / "thumbs" / "00000_before.png"))
    assert before_thumb.shape == np.asarray(Image.open(out / "thumbs" / "00000_gt.png")).shape
    assert abs(int(before_thumb.max()) - int(np.asarray(worst.gt).max()) // 3) <= 2  # the before source, at 1/3
    assert len(list((out / "thumbs").iterdir())) == 6 * len(items)
    heads = re.findall(r"<th(?: title=\"([^\"]*)\")?>(image|depth|GT|before|prediction|error)</th>", page)
    assert [h for _, h in heads] == ["image", "depth", "GT", "before", "prediction", "error"]
    assert dict((h, t) for t, h in heads)["before"] == html.escape(BEFORE.before_name)
    table = re.search(r'<table id="before-after">.*?</table>', page).group(0)
    assert re.findall(r"<tr><th>([^<]*)</th><td>DIS-TE1</td><td>([^<]*)</td>", table) == [
        (BEFORE.before_name, "0.123"),
        (BEFORE.after_name, "0.500"),
    ]
    assert '<img class="curves" id="training-curve" src="training_curve.png"' in page
    assert 'href="training_curve.png"' in page
    legend = re.search(r'<p class="legend" id="error-legend">(.*?)</p>', page).group(1)
    assert "|prediction − GT|" in legend and "brighter = further off" in legend and "half brightness" in legend
    # a page whose items have no before-prediction keeps five columns and no before / after table
    write_index(out, _results(items), _items(4, 30))
    page = (out / "index.html").read_text()
    assert "_before." not in page and 'id="before-after"' not in page
    assert len(list((out / "thumbs").iterdir())) == 5 * 4


def _loaded(browser, row: str) -> list[bool]:
    """Per thumbnail of the row: decoded at the size the page reserved for it."""
    return browser.js(
        f"Array.from(document.querySelectorAll('#gallery tbody tr:{row} img'))"
        ".map(i => i.naturalWidth > 0 && i.naturalWidth === i.width && i.naturalHeight === i.height)"
    )


def _choose_split(browser, split: str) -> None:
    browser.js(
        f"(s => {{ s.value = '{split}'; s.dispatchEvent(new Event('change')); }})(document.getElementById('split'))"
    )


def _ids(browser):
    return browser.js("Array.from(document.querySelectorAll('#gallery tbody tr')).map(r => r.dataset.id)")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_page_in_headless_chromium(tmp_path):
    items = _with_before(_items(40, 180))
    out = tmp_path / "eval"
    curve = np.linspace(1, 0, 256)
    plot_curves(
        {s: {"precision": curve, "recall": curve[::-1], "fmeasure": curve} for s in SPLITS}, out / "curves.png", LABEL
    )
    _training_curve(out)
    write_index(out, _results(items), items, label=LABEL, before=BEFORE)
    browser = Browser(tmp_path / "profile")
    try:
        browser.open((out / "index.html").as_uri())
        assert browser.js("document.querySelectorAll('#gallery tbody tr').length") == 40
        assert browser.js("document.title").startswith("RANDOM WEIGHTS")
        banner = browser.js(
            "(() => { const b = document.getElementById('random-label'); const r = b.getBoundingClientRect();"
            " return [b.innerText, getComputedStyle(b).backgroundColor, r.top, r.height]; })()"
        )
        assert banner[0] == LABEL and banner[1] == "rgb(204, 0, 0)" and banner[2] <= 0 and banner[3] >= 30
        browser.js("new Promise(r => setTimeout(r, 500))")  # let the visible thumbnails arrive
        assert browser.js("document.querySelector('img.curves').naturalWidth") > 0
        # the training curve near the top, above the gallery, fully decoded
        assert browser.js("document.getElementById('training-curve').naturalWidth") == 1210
        assert browser.js(
            "document.getElementById('training-curve').getBoundingClientRect().top"
            " < document.getElementById('gallery').getBoundingClientRect().top"
        )
        assert browser.js("document.querySelectorAll('#before-after tbody tr').length") == 2
        heads = browser.js("Array.from(document.querySelectorAll('#gallery thead th')).map(h => h.textContent)")
        assert heads[2:8] == ["image", "depth", "GT", "before", "prediction", "error"]
        assert browser.js("document.querySelector('#gallery tbody tr img[alt=before]').naturalWidth") > 0
        assert _loaded(browser, "first-child") == [True] * 6
        shots = [browser.screenshot(tmp_path / "eval_index.png")]

        by_mae = [it.id for it in sorted(items, key=lambda it: -it.metrics["mae"])]
        assert _ids(browser) == by_mae  # worst first as written
        by_fmax = [it.id for it in sorted(items, key=lambda it: it.metrics["max_f"])]
        browser.click("#gallery th[data-key=Fmax]")
        assert _ids(browser) == by_fmax  # first click: worst (lowest F_max) first
        browser.js("window.scrollBy(0, 300)")  # the banner and the gallery header stay on screen
        shots.append(browser.screenshot(tmp_path / "eval_sorted_by_fmax.png"))
        assert browser.js("document.getElementById('random-label').getBoundingClientRect().top") == 0
        browser.click("#gallery th[data-key=Fmax]")
        assert _ids(browser) == by_fmax[::-1]
        browser.click("#gallery th[data-key=HCE]")
        assert _ids(browser) == [it.id for it in sorted(items, key=lambda it: -it.metrics["hce"])]
        browser.click("#gallery th[data-key=id]")
        assert _ids(browser) == sorted(it.id for it in items)

        _choose_split(browser, "DIS-TE2")
        assert browser.js("document.querySelectorAll('#gallery tbody tr:not([hidden])').length") == 10
        assert browser.js("document.getElementById('count').textContent") == "10 images"
        _choose_split(browser, "")

        browser.js("document.querySelector('#gallery tbody tr:last-child').scrollIntoView()")  # lazy rows load
        browser.js("new Promise(r => setTimeout(r, 1000))")
        assert _loaded(browser, "last-child") == [True] * 6
        assert browser.errors() == []
        assert all(u.startswith(("file:", "data:", "about:")) for u in browser.requested_urls())
    finally:
        browser.close()
    print("screenshots:", *shots)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_page_at_dis5k_scale(tmp_path):
    """2,470 rows (DIS-VD + DIS-TE1..4): loads lazily, sorts, no errors."""
    n = 2470
    items = _items(n, 24)
    start = time.perf_counter()
    write_index(tmp_path / "eval", _results(items), items, side=24)
    print(f"write_index, {n} images (24 px sources): {time.perf_counter() - start:.1f} s")
    browser = Browser(tmp_path / "profile")
    try:
        browser.open((tmp_path / "eval" / "index.html").as_uri())
        assert browser.js("document.querySelectorAll('#gallery tbody tr').length") == n
        loaded = browser.js("Array.from(document.images).filter(i => i.naturalWidth > 0).length")
        assert 0 < loaded < 5 * n / 4  # lazy: only rows near the viewport are fetched
        ms = browser.js(
            "(() => { const t = performance.now(); document.querySelector('#gallery th[data-key=Fw]').click();"
            " return performance.now() - t; })()"
        )
        print(f"sorting {n} rows: {ms:.0f} ms")
        by_fw = [it.id for it in sorted(items, key=lambda it: it.metrics["weighted_f"])]
        assert _ids(browser) == by_fw
        assert browser.errors() == []
    finally:
        browser.close()
