"""`pdfnet-pipeline data ...`: manifests of a dataset on disk, and the generated sample."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from pdfnet_pipeline.data.manifest import Manifest


def _manifest(
    root: Annotated[
        Path,
        typer.Argument(
            help="Dataset root: split folders (DIS-TR, DIS-VD, DIS-TE1..4 or your own names, each with im/ + gt/ "
            "or images/ + masks/), or a folder of pairs (ROOT/im + ROOT/gt, ROOT/images + ROOT/masks, or "
            "--images / --masks; sub-folders allowed), which is split into train / val / test."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest file to write (JSONL).")],
    split: Annotated[
        list[str] | None,
        typer.Option(help="Split layout: only these splits (repeatable); default: every split folder."),
    ] = None,
    allow_mismatch: Annotated[
        bool, typer.Option(help="Write the manifest even if DIS-VD/TE1..4 differ from the official name lists.")
    ] = False,
    skip_bad: Annotated[
        bool,
        typer.Option(
            help="Leave unreadable / unpaired / duplicate / mis-sized files out (each reported) instead of stopping."
        ),
    ] = False,
    workers: Annotated[int | None, typer.Option(help="Decoding processes (default: all cores, at most 8).")] = None,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images with more pixels (decompression bombs).")
    ] = 200_000_000,
    images: Annotated[
        str | None, typer.Option(help="Folder of pairs: the images folder, relative to ROOT (default im/ or images/).")
    ] = None,
    masks: Annotated[
        str | None, typer.Option(help="Folder of pairs: the masks folder, relative to ROOT (default gt/ or masks/).")
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Folder of pairs: share of the pairs for val (default 0.1; 0: no val).")
    ] = None,
    test_fraction: Annotated[
        float | None, typer.Option(help="Folder of pairs: share of the pairs for test (default 0.1; 0: no test).")
    ] = None,
    split_seed: Annotated[
        int | None, typer.Option(help="Folder of pairs: seed of the train / val / test draw (default 0).")
    ] = None,
) -> None:
    """Scan ROOT, decode and hash every image/mask pair, check the official lists, write FILE."""
    from pdfnet_pipeline.data.manifest import ManifestError, scan, write_manifest
    from pdfnet_pipeline.data.pairs import PairOptions

    options = PairOptions(images, masks, val_fraction, test_fraction, split_seed)
    try:
        result = scan(root, split, workers=workers, max_pixels=max_pixels, pairs=options)
    except ManifestError as err:
        for problem in getattr(err, "problems", []):  # the bad files that made a split too small
            typer.echo(f"bad input: {problem}", err=True)
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    for problem in result.problems:
        typer.echo(f"bad input: {problem}", err=True)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    _report_mismatches(result.mismatches, out)
    for note in result.notes:
        typer.echo(f"official list: {note}", err=True)
    stop = (result.problems and not skip_bad) or (result.mismatches and not allow_mismatch)
    if stop:
        hints = []
        if result.problems and not skip_bad:
            hints.append(f"{len(result.problems)} bad file(s) (--skip-bad leaves them out)")
        if result.mismatches and not allow_mismatch:
            hints.append(
                f"{len(result.mismatches)} difference(s) to the official lists (--allow-mismatch accepts them)"
            )
        typer.echo(f"error: no manifest written: {'; '.join(hints)}", err=True)
        raise typer.Exit(1)
    write_manifest(result.manifest, out)
    typer.echo(_written_line(out, result.manifest))


def _written_line(out: Path, manifest: Manifest) -> str:
    """`wrote F: N samples (per split)`, and for a folder of pairs how it was split."""
    counts = ", ".join(f"{s} {len(manifest.split(s))}" for s in manifest.splits())
    line = f"wrote {out}: {len(manifest.entries)} samples ({counts})"
    pairs = manifest.info.get("pairs")
    if pairs:
        line += f"; split seeded {pairs['seed']}, val {pairs['val_fraction']:g}, test {pairs['test_fraction']:g}"
    return line


def _report_mismatches(lines: list[str], out: Path, shown: int = 10) -> None:
    """Name the first few differences per split; all of them go to OUT.mismatches.txt."""
    if not lines:
        return
    by_split: dict[str, list[str]] = {}
    for line in lines:
        by_split.setdefault(line.split(":", 1)[0], []).append(line)
    for split, items in by_split.items():
        missing = sum("missing" in i for i in items)
        typer.echo(f"official list: {split}: {missing} missing, {len(items) - missing} extra", err=True)
        for item in items[:shown]:
            typer.echo(f"  {item}", err=True)
        if len(items) > shown:
            typer.echo(f"  ... {len(items) - shown} more", err=True)
    full = out.with_name(out.name + ".mismatches.txt")
    full.parent.mkdir(parents=True, exist_ok=True)
    full.write_text("\n".join(lines) + "\n")
    typer.echo(f"official list: all {len(lines)} differences listed in {full}", err=True)


def _sample(
    out: Annotated[Path, typer.Argument(help="Folder to write the sample into.")],
    per_split: Annotated[int, typer.Option(help="Images in each of DIS-VD, DIS-TE1..4.")] = 3,
    train: Annotated[int, typer.Option(help="Images in DIS-TR.")] = 8,
    seed: Annotated[int, typer.Option(help="Generator seed (same seed, same bytes).")] = 0,
    style: Annotated[
        str,
        typer.Option(
            help="photo: ~1 MP scenes with 2-6 px structures (benchmarks); demo: 352-480 px scenes a tiny "
            "model learns in minutes (make demo); holdout: other objects in the demo's style (to judge a "
            "recipe on scenes it was not tuned on); shapes: one solid shape per scene (learnt in a few dozen steps); "
            "studio: the holdout objects dark on a pale backdrop (a domain the demo's model has not seen: fine-tuning)."
        ),
    ] = "photo",
    layout: Annotated[
        str,
        typer.Option(
            help="dis: the six DIS-5K split folders; folder: train + 5 * per-split pairs as one folder of pairs "
            "(images/ + masks/, mixed formats, sub-folders, one RGBA cut-out mask) for `data manifest` to split."
        ),
    ] = "dis",
) -> None:
    """Generate a small dataset of thin, wiry objects with exact masks (DIS-5K layout or a folder of pairs)."""
    from pdfnet_pipeline.data.sample import LAYOUTS, STYLES, generate_sample

    if style not in STYLES:
        raise typer.BadParameter(f"{style!r}: choose one of {', '.join(STYLES)}", param_hint="--style")
    if layout not in LAYOUTS:
        raise typer.BadParameter(f"{layout!r}: choose one of {', '.join(LAYOUTS)}", param_hint="--layout")
    paths = generate_sample(out, per_split=per_split, seed=seed, train=train, style=style, layout=layout)
    typer.echo(f"wrote {len(paths)} image/mask pairs under {out}")


def _splits(
    manifest: Annotated[Path, typer.Argument(help="A manifest written by `data manifest`.")],
    role: Annotated[
        str | None, typer.Option(help="Only the splits of this role: train, val or test (held out).")
    ] = None,
) -> None:
    """Print the manifest's splits, one per line with its role and size (`--role`: names only, for scripts)."""
    from pdfnet_pipeline.data.manifest import ManifestError, read_manifest, split_role

    if role not in (None, "train", "val", "test"):
        raise typer.BadParameter(f"{role!r}: choose train, val or test", param_hint="--role")
    try:
        m = read_manifest(manifest)
    except ManifestError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    names = [s for s in m.splits() if role is None or split_role(s) == role]
    if role is not None and not names:
        typer.echo(f"error: {manifest} has no {role} split (splits: {', '.join(m.splits())})", err=True)
        raise typer.Exit(2)
    for name in names:
        typer.echo(name if role else f"{name}\t{split_role(name)}\t{len(m.split(name))}")


def register(app: typer.Typer) -> None:
    app.command("manifest")(_manifest)
    app.command("splits")(_splits)
    app.command("sample")(_sample)
