"""The serve page in a real headless Chromium: two photos picked through the page's file input
come back as depth map, mask and cut-out at each photo's own size (the mask's pixels are the
API's), with the random-weight banner, no console errors and no request leaving 127.0.0.1."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, Browser
from serve_fixtures import encoded, photo, running, tiny_checkpoint

from pdfnet_pipeline.segmenter import Segmenter
from pdfnet_pipeline.serve.config import ServeConfig
from pdfnet_pipeline.serve.engine import Engine

OUT = Path(__file__).parents[1] / "out"

# The mask image's pixels as the page shows them (red channel of a canvas copy), as a list.
MASK_PIXELS = """(() => {
  const img = document.querySelectorAll(".result")[%d].querySelector("img.mask");
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const out = new Array(c.width * c.height);
  for (let i = 0; i < out.length; i++) out[i] = d[4 * i];
  return out;
})()"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_page_segments_picked_photos_offline(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    segmenter = Segmenter.from_pretrained(ckpt, device="cpu")
    names = {"lattice.png": encoded(photo(5)), "branches.jpg": encoded(photo(6), "JPEG", quality=90)}
    paths = []
    for name, data in names.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    want = {p.name: np.asarray(segmenter.predict(p)) for p in paths}

    cfg = ServeConfig(checkpoint=str(ckpt))
    with running(cfg, Engine(segmenter.predictor, checkpoint=str(ckpt))) as (port, _):
        origin = f"http://127.0.0.1:{port}"
        browser = Browser(tmp_path / "profile", width=1280, height=1100)
        try:
            browser.open(origin + "/")
            banner = browser.js("document.getElementById('banner').textContent")
            assert banner.startswith("RANDOM-WEIGHT MODELS: depth: DAM v2 tiny with random weights")
            assert browser.js("getComputedStyle(document.getElementById('banner')).backgroundColor") == (
                "rgb(179, 38, 30)"
            )
            root = browser.call("DOM.getDocument")["root"]["nodeId"]
            node = browser.call("DOM.querySelector", nodeId=root, selector="#files")["nodeId"]
            browser.call("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])
            done = (
                "[...document.querySelectorAll('.result')].map(r => [r.querySelector('h2').textContent, "
                "r.dataset.state, [...r.querySelectorAll('img')].map(i => [i.className, i.naturalWidth, "
                "i.naturalHeight])])"
            )
            for _ in range(600):
                cards = browser.js(done)
                # "done" is set when the answers arrive; the browser decodes the images after that
                decoded = all(w > 0 for _, state, imgs in cards if state == "done" for _, w, _ in imgs)
                if len(cards) == 2 and all(state in ("done", "error") for _, state, _ in cards) and decoded:
                    break
                browser.js("new Promise(r => setTimeout(r, 100))")
            else:
                pytest.fail(f"the results did not appear: {cards}")
            for name, state, imgs in cards:
                h, w = want[name].shape
                assert state == "done", browser.js("document.getElementById('results').innerText")
                assert imgs == [["depth", w, h], ["mask", w, h], ["cutout", w, h]]
            index = [c[0] for c in cards].index("lattice.png")  # newest first
            shown = browser.js(MASK_PIXELS % index)
            np.testing.assert_array_equal(
                np.asarray(shown, np.uint8).reshape(want["lattice.png"].shape), want["lattice.png"]
            )
            status = browser.js("document.querySelector('.result .status').textContent")
            assert " ms on the server (model " in status and "batch of " in status
            downloads = browser.js("[...document.querySelectorAll('a.download')].map(a => a.download)")
            assert sorted(downloads) == sorted(
                f"{s}_{k}.png" for s in ("lattice", "branches") for k in ("depth", "mask", "cutout")
            )
            shot = browser.screenshot(tmp_path / "serve_page.png", full_page=True)
            if OUT.is_dir():
                shutil.copy(shot, OUT / "serve_page.png")
            assert browser.errors() == []
            urls = browser.requested_urls()
            assert urls and all(u.startswith((origin + "/", f"blob:{origin}/", "data:")) for u in urls), urls
        finally:
            browser.close()
