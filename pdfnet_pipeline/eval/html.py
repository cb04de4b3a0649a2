"""`eval/index.html`: the metric table, the curves and a sortable per-image gallery in one page.

The page is self-contained (inline CSS and JS, no network): thumbnails are small files in
`eval/thumbs/`, loaded lazily with fixed sizes, so a 2,470-image DIS-5K evaluation stays usable.
Rows are written worst first (highest MAE); clicking a column header sorts by it, worst first on
the first click. A random-weight label is a red banner that stays on screen while scrolling, and
is in the page title.
"""

from __future__ import annotations

import html
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pdfnet_pipeline.eval.report import COLUMNS, format_value

# per-image metric key (ImageMetrics field) -> the table's key in report.COLUMNS
IMAGE_METRICS = {
    "max_f": "Fmax",
    "weighted_f": "Fw",
    "mean_e": "Em",
    "s_measure": "Sa",
    "mae": "MAE",
    "hce": "HCE",
}
# A file, an array (uint8, or float in [0, 1]) or a function returning one: read when its
# thumbnail is made, so 2,470 items need not hold their images in memory (e.g. store rows).
Source = Path | str | np.ndarray | Callable[[], np.ndarray]


@dataclass
class GalleryItem:
    """One evaluated image. `gt` is at the photo's native size: it fixes the thumbnails' aspect
    (the store's square 1024² image and depth are shown at that aspect, as the contact sheet does)."""

    split: str
    id: str
    metrics: dict[str, float]  # IMAGE_METRICS keys: max_f, weighted_f, s_measure, mean_e, mae, hce
    image: Source  # H x W x 3
    depth: Source  # H x W
    gt: Source  # H x W
    pred: Source  # H x W


KINDS = (("image", "jpg"), ("depth", "jpg"), ("gt", "png"), ("pred", "png"), ("error", "png"))


def _open(src: Source, mode: str, side: int) -> Image.Image:
    if callable(src):
        src = np.asarray(src())
    if isinstance(src, np.ndarray):
        arr = src if src.dtype == np.uint8 else (np.clip(src, 0, 1) * 255).round().astype(np.uint8)
        return Image.fromarray(arr).convert(mode)
    im = Image.open(src)
    im.draft(mode, (side, side))  # JPEG: decode at a reduced scale (a no-op for other formats)
    return im.convert(mode)


def thumb_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The photo's aspect, longest side `side`."""
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def error_map(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB: false positives (prediction above GT) red, false negatives blue, by how far off."""
    diff = pred.astype(np.float32) - gt.astype(np.float32)
    fp, fn = np.clip(diff, 0, 255), np.clip(-diff, 0, 255)
    return np.stack([fp, fn * 0.5, fn], axis=-1).round().astype(np.uint8)


def _write_thumbs(item: GalleryItem, stem: Path, side: int) -> tuple[int, int]:
    """The five thumbnails of one item as `<stem>_<kind>.<ext>`; returns their (width, height)."""
    gt = _open(item.gt, "L", side)
    size = thumb_size(*gt.size, side)
    tiles = {
        "image": _open(item.image, "RGB", side).resize(size, Image.BILINEAR, reducing_gap=3.0),
        "depth": _open(item.depth, "L", side).resize(size, Image.BILINEAR, reducing_gap=3.0),
        "gt": gt.resize(size, Image.BILINEAR, reducing_gap=3.0),
        "pred": _open(item.pred, "L", side).resize(size, Image.BILINEAR, reducing_gap=3.0),
    }
    tiles["error"] = Image.fromarray(error_map(np.asarray(tiles["gt"]), np.asarray(tiles["pred"])))
    for kind, ext in KINDS:
        tiles[kind].save(f"{stem}_{kind}.{ext}", quality=85)  # quality: JPEG only, PNG ignores it
    return size


def _worst_first(items: list[GalleryItem]) -> list[GalleryItem]:
    return sorted(items, key=lambda it: (-_num(it.metrics.get("mae")), it.split, it.id))


def _num(value) -> float:
    """NaN for a missing value; sorts last in the page and in Python (-NaN compares false)."""
    return float("nan") if value is None else float(value)


def write_index(
    out: Path,
    results: dict[str, dict[str, float]],
    items: list[GalleryItem],
    label: str | None = None,
    title: str = "PDFNet evaluation",
    side: int = 144,
    workers: int | None = None,
) -> Path:
    """Write `out/index.html` and its thumbnails in `out/thumbs/` (replaced); returns the page.

    `results`: per split the summary dict of the tables (Fmax ... HCE, count). `curves.png`,
    `contact_sheet.png` and `results.*` are linked when present in `out`.
    """
    out.mkdir(parents=True, exist_ok=True)
    thumbs = out / "thumbs"
    shutil.rmtree(thumbs, ignore_errors=True)  # thumbnails are named by row: drop a previous run's
    thumbs.mkdir()
    ordered = _worst_first(items)
    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:  # PIL releases the GIL
        sizes = list(pool.map(lambda a: _write_thumbs(a[1], thumbs / f"{a[0]:05d}", side), enumerate(ordered)))
    page = out / "index.html"
    page.write_text(_page(out, results, ordered, sizes, label, title), encoding="utf-8")
    return page


def _page(out: Path, results, items, sizes, label: str | None, title: str) -> str:
    e = html.escape
    head_title = f"RANDOM WEIGHTS: {title}" if label else title
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(head_title)}</title><style>{_CSS}</style></head><body>",
    ]
    if label:
        parts.append(f'<div id="random-label" class="random" role="alert">{e(label)}</div>')
    parts.append(f"<h1>{e(title)}</h1>")
    names = ("results.md", "results.csv", "results.json", "contact_sheet.png")
    links = " · ".join(f'<a href="{n}">{n}</a>' for n in names if (out / n).is_file())
    parts.append(f'<div class="top"><div>{_summary_table(results)}<p class="links">{links}</p></div>')
    if (out / "curves.png").is_file():
        parts.append('<img class="curves" src="curves.png" alt="PR curve and F-measure over thresholds">')
    parts.append("</div>")
    parts.append(_gallery(items, sizes))
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def _summary_table(results: dict[str, dict[str, float]]) -> str:
    e = html.escape
    splits = list(results)
    rows = ['<table id="summary"><thead><tr><th>metric</th>']
    rows += [f"<th>{e(s)}</th>" for s in splits]
    rows.append("</tr></thead><tbody>")
    for key, name, _ in COLUMNS:
        cells = "".join(f"<td>{format_value(key, results[s].get(key))}</td>" for s in splits)
        rows.append(f"<tr><th>{e(name)}</th>{cells}</tr>")
    counts = "".join(f"<td>{e(str(results[s].get('count', '')))}</td>" for s in splits)
    rows.append(f"<tr><th>images</th>{counts}</tr></tbody></table>")
    return "".join(rows)


def _gallery(items: list[GalleryItem], sizes: list[tuple[int, int]]) -> str:
    e = html.escape
    splits = sorted({it.split for it in items})
    options = "".join(f'<option value="{e(s)}">{e(s)}</option>' for s in splits)
    head = ['<th data-key="split" data-type="text" data-worst="asc">split</th>',
            '<th data-key="id" data-type="text" data-worst="asc">id</th>']  # fmt: skip
    head += [f"<th>{k}</th>" for k in ("image", "depth", "GT", "prediction", "error")]
    for key, name, higher_better in COLUMNS:
        worst = "asc" if higher_better else "desc"
        sort = ' aria-sort="descending"' if key == "MAE" else ""  # the order the rows are written in
        head.append(f'<th data-key="{key}" data-type="num" data-worst="{worst}"{sort}>{e(name)}</th>')
    body = []
    for i, (it, (w, h)) in enumerate(zip(items, sizes)):
        values = {IMAGE_METRICS[k]: _num(it.metrics.get(k)) for k in IMAGE_METRICS}
        data = "".join(f' data-{k.lower()}="{v!r}"' for k, v in values.items())
        imgs = "".join(
            f'<td><img src="thumbs/{i:05d}_{kind}.{ext}" width="{w}" height="{h}" loading="lazy" alt="{kind}"></td>'
            for kind, ext in KINDS
        )
        cells = "".join(f"<td>{format_value(k, v)}</td>" for k, v in values.items())
        body.append(
            f'<tr data-split="{e(it.split)}" data-id="{e(it.id)}"{data}>'
            f'<td>{e(it.split)}</td><td class="id">{e(it.id)}</td>{imgs}{cells}</tr>'
        )
    return (
        f'<h2>Per image</h2><p class="controls">split <select id="split"><option value="">all</option>{options}'
        f'</select> <span id="count">{len(items)} images</span> · click a column to sort (worst first); '
        '<span class="fp">red</span>: predicted but not GT, <span class="fn">blue</span>: GT missed</p>'
        f'<table id="gallery"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


_CSS = """
body{font:14px system-ui,sans-serif;margin:16px;color:#222}
.random{background:#c00;color:#fff;font-weight:bold;font-size:20px;padding:12px 16px;margin:-16px -16px 16px;
position:sticky;top:0;z-index:2}
table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
#summary th:first-child,#gallery td:nth-child(-n+2){text-align:left}#gallery th{text-align:center}
#gallery td:first-child{white-space:nowrap}
#gallery th{background:#f4f4f4;position:sticky;top:var(--banner,0px);z-index:1}#gallery th[data-key]{cursor:pointer;user-select:none}
#gallery th[aria-sort=ascending]::after{content:" ▲"}#gallery th[aria-sort=descending]::after{content:" ▼"}
#gallery img{display:block;background:#202020}.id{min-width:8em;max-width:16em;overflow-wrap:anywhere}
.top{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}.curves{max-width:min(100%,820px)}.fp{color:#d00}.fn{color:#07f}
"""

# Sort by a header's data-key (first click: worst first, again: reversed); NaN always last.
# The random-weight banner stays on screen (sticky): the gallery's header sticks below it.
_JS = """
const banner = document.getElementById('random-label');
if (banner) document.body.style.setProperty('--banner', banner.offsetHeight + 'px');
const body = document.querySelector('#gallery tbody');
const rows = Array.from(body.rows);
const heads = document.querySelectorAll('#gallery th[data-key]');
function sortBy(th) {
  const key = th.dataset.key, num = th.dataset.type === 'num';
  let dir = th.dataset.worst === 'asc' ? 1 : -1;
  if (th.getAttribute('aria-sort')) dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
  const val = r => num ? parseFloat(r.dataset[key.toLowerCase()]) : r.dataset[key];
  rows.sort((a, b) => {
    const x = val(a), y = val(b);
    if (num && (isNaN(x) || isNaN(y))) return isNaN(x) - isNaN(y);
    return (x < y ? -1 : x > y ? 1 : 0) * dir;
  });
  heads.forEach(h => h.removeAttribute('aria-sort'));
  th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
  body.append(...rows);
}
heads.forEach(th => th.addEventListener('click', () => sortBy(th)));
document.getElementById('split').addEventListener('change', ev => {
  let shown = 0;
  rows.forEach(r => { r.hidden = ev.target.value !== '' && r.dataset.split !== ev.target.value; shown += !r.hidden; });
  document.getElementById('count').textContent = shown + ' images';
});
"""
