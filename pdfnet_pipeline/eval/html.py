"""`eval/index.html`: the metric table (and the before / after table), the curves (PR / F, and
the run's training curve when eval copied it beside the page as `training_curve.png`) and a
sortable per-image gallery in one page: image, depth, GT, the "before" model's prediction (when
evaluated), the prediction and its error map.

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

from pdfnet_pipeline.eval.report import COLUMNS, BeforeAfter, format_value

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
    before: Source | None = None  # H x W: the "before" model's prediction (e.g. the initial weights)


# thumbnail kind, file type, column title; "before" only in a page whose items have one
KINDS = (
    ("image", "jpg", "image"),
    ("depth", "jpg", "depth"),
    ("gt", "png", "GT"),
    ("before", "png", "before"),
    ("pred", "png", "prediction"),
    ("error", "png", "error"),
)
TRAINING_CURVE = "training_curve.png"  # the run's curve.png, copied beside the page by the eval stage


def page_kinds(items: list[GalleryItem]) -> tuple[tuple[str, str, str], ...]:
    """The thumbnail columns of a page: "before" when any item has a before-prediction."""
    with_before = any(it.before is not None for it in items)
    return tuple(k for k in KINDS if k[0] != "before" or with_before)


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
    """RGB, graded by |prediction - GT| per pixel: red where the prediction is above the GT
    (false positive), blue (0, 0.5, 1 x the difference) where below (missed foreground), black
    where they agree; a half-confident pixel is half as bright."""
    diff = pred.astype(np.float32) - gt.astype(np.float32)
    fp, fn = np.clip(diff, 0, 255), np.clip(-diff, 0, 255)
    return np.stack([fp, fn * 0.5, fn], axis=-1).round().astype(np.uint8)


def _write_thumbs(item: GalleryItem, stem: Path, side: int, kinds=KINDS) -> tuple[int, int]:
    """The thumbnails of one item (`kinds`) as `<stem>_<kind>.<ext>`; returns their (width, height)."""
    gt = _open(item.gt, "L", side)
    size = thumb_size(*gt.size, side)
    tiles = {
        "image": _open(item.image, "RGB", side).resize(size, Image.BILINEAR, reducing_gap=3.0),
        "depth": _open(item.depth, "L", side).resize(size, Image.BILINEAR, reducing_gap=3.0),
        "gt": gt.resize(size, Image.BILINEAR, reducing_gap=3.0),
        "pred": _open(item.pred, "L", side).resize(size, Image.BILINEAR, reducing_gap=3.0),
    }
    tiles["error"] = Image.fromarray(error_map(np.asarray(tiles["gt"]), np.asarray(tiles["pred"])))
    if item.before is not None:
        tiles["before"] = _open(item.before, "L", side).resize(size, Image.BILINEAR, reducing_gap=3.0)
    else:  # a page with a before column: this item has none
        tiles["before"] = Image.new("L", size, 32)
    for kind, ext, _ in kinds:
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
    before: BeforeAfter | None = None,
) -> Path:
    """Write `out/index.html` and its thumbnails in `out/thumbs/` (replaced); returns the page.

    `results`: per split the summary dict of the tables (Fmax ... HCE, count). `before`: the
    before / after table below it (and the before column's model name). `curves.png`,
    `training_curve.png`, `contact_sheet.png` and `results.*` are shown / linked when present in `out`.
    """
    out.mkdir(parents=True, exist_ok=True)
    thumbs = out / "thumbs"
    shutil.rmtree(thumbs, ignore_errors=True)  # thumbnails are named by row: drop a previous run's
    thumbs.mkdir()
    ordered, kinds = _worst_first(items), page_kinds(items)
    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:  # PIL releases the GIL
        sizes = list(pool.map(lambda a: _write_thumbs(a[1], thumbs / f"{a[0]:05d}", side, kinds), enumerate(ordered)))
    page = out / "index.html"
    page.write_text(_page(out, results, ordered, sizes, label, title, kinds, before), encoding="utf-8")
    return page


def _page(out: Path, results, items, sizes, label: str | None, title: str, kinds=KINDS, before=None) -> str:
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
    names = ("results.md", "results.csv", "results.json", "contact_sheet.png", TRAINING_CURVE)
    links = " · ".join(f'<a href="{n}">{n}</a>' for n in names if (out / n).is_file())
    compared = _before_after_table(results, before) if before else ""
    parts.append(f'<div class="top"><div>{_summary_table(results)}{compared}<p class="links">{links}</p></div>')
    if (out / TRAINING_CURVE).is_file():
        alt = "training curve: loss per step, validation F_max and MAE per epoch"
        parts.append(f'<img class="curves" id="training-curve" src="{TRAINING_CURVE}" alt="{alt}">')
    if (out / "curves.png").is_file():
        parts.append('<img class="curves" src="curves.png" alt="PR curve and F-measure over thresholds">')
    parts.append("</div>")
    parts.append(_gallery(items, sizes, kinds, before))
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


def _before_after_table(results: dict[str, dict[str, float]], ba: BeforeAfter) -> str:
    """One row per model (and compared split): the before model beside the evaluated one."""
    e = html.escape
    rows = ['<table id="before-after"><caption>Before / after</caption><thead><tr><th>model</th><th>split</th>']
    rows += [f"<th>{e(name)}</th>" for _, name, _ in COLUMNS]
    rows.append("<th>images</th></tr></thead><tbody>")
    for name, split, row in ba.rows(results):
        cells = "".join(f"<td>{format_value(k, row.get(k))}</td>" for k, _, _ in COLUMNS)
        rows.append(f"<tr><th>{e(name)}</th><td>{e(split)}</td>{cells}<td>{e(str(row.get('count', '')))}</td></tr>")
    rows.append("</tbody></table>")
    return "".join(rows)


def _gallery(items: list[GalleryItem], sizes: list[tuple[int, int]], kinds=KINDS, before=None) -> str:
    e = html.escape
    splits = sorted({it.split for it in items})
    options = "".join(f'<option value="{e(s)}">{e(s)}</option>' for s in splits)
    head = ['<th data-key="split" data-type="text" data-worst="asc">split</th>',
            '<th data-key="id" data-type="text" data-worst="asc">id</th>']  # fmt: skip
    models = {"before": before.before_name, "pred": before.after_name} if before else {}
    head += [f'<th title="{e(models[k])}">{t}</th>' if k in models else f"<th>{t}</th>" for k, _, t in kinds]
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
            for kind, ext, _ in kinds
        )
        cells = "".join(f"<td>{format_value(k, v)}</td>" for k, v in values.items())
        body.append(
            f'<tr data-split="{e(it.split)}" data-id="{e(it.id)}"{data}>'
            f'<td>{e(it.split)}</td><td class="id">{e(it.id)}</td>{imgs}{cells}</tr>'
        )
    compared = ""
    if models and any(k == "before" for k, _, _ in kinds):
        compared = f'<p class="legend">before: {e(models["before"])}; prediction: {e(models["pred"])}</p>'
    return (
        f'<h2>Per image</h2><p class="controls">split <select id="split"><option value="">all</option>{options}'
        f'</select> <span id="count">{len(items)} images</span> · click a column to sort (worst first)</p>'
        f"{compared}{_ERROR_LEGEND}"
        f'<table id="gallery"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


# What the error map's colours mean (error_map): graded, not a binary mask.
_ERROR_LEGEND = (
    '<p class="legend" id="error-legend">error map: |prediction − GT| per pixel, brighter = further off '
    '(black: agrees). <span class="ramp fp-ramp"></span> <span class="fp">red</span>: prediction above the GT '
    '(foreground that is not there); <span class="ramp fn-ramp"></span> <span class="fn">blue</span>: prediction '
    "below the GT (foreground missed). A pixel predicted at 50 % where the GT is 0 or 255 shows at half brightness.</p>"
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
#before-after{margin-top:16px}#before-after caption{text-align:left;font-weight:bold;padding:4px 0}
#before-after tr>:nth-child(-n+2){text-align:left}.legend{margin:4px 0}
.ramp{display:inline-block;width:64px;height:10px;vertical-align:middle;border:1px solid #999}
.fp-ramp{background:linear-gradient(90deg,#000,#f00)}.fn-ramp{background:linear-gradient(90deg,#000,#0080ff)}
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
