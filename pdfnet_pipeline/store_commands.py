"""`pdfnet-pipeline store ...`: inspect, verify (and repair) a split store, export it as one HDF5 file.

HDF5 earns its place only as a single-file copy to hand around; training reads the Zarr stores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def export_h5(src: Path, out: Path, *, done_only: bool = True) -> int:
    """Copy store `src` into HDF5 file `out` (same array names, gzip-1, one chunk per sample,
    attributes as JSON); returns the number of samples copied."""
    import h5py
    import numpy as np

    from pdfnet_pipeline import store

    st = store.open_read(src)
    rows = st.done_rows() if done_only else np.arange(st.n)
    tmp = out.with_name(out.name + ".partial")
    with h5py.File(tmp, "w") as f:
        for key, value in st.attrs.items():
            f.attrs[key] = json.dumps(value)
        f.create_dataset("ids", data=np.asarray(st.ids, dtype=object)[rows], dtype=h5py.string_dtype())
        for name, src_arr in st.arrays().items():
            shape = (len(rows), *src_arr.shape[1:])
            chunks = (1, *src_arr.shape[1:]) if len(rows) else None
            dst = f.create_dataset(
                name, shape=shape, dtype=src_arr.dtype, chunks=chunks, compression="gzip", compression_opts=1
            )
            for j, i in enumerate(rows):  # one sample at a time: bounded memory
                dst[j] = src_arr[int(i)]
    tmp.replace(out)  # never a half-written file under the final name
    return len(rows)


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(path: Annotated[Path, typer.Argument(help="A split store, e.g. stores/DIS-VD.zarr.")]) -> None:
        """Samples done, size, maps and model provenance of one store (JSON)."""
        from pdfnet_pipeline import store

        typer.echo(json.dumps(store.split_status(path), indent=2))

    @app.command("verify")
    def verify(
        path: Annotated[Path, typer.Argument(help="A split store, e.g. stores/DIS-VD.zarr.")],
        repair: Annotated[
            bool, typer.Option("--repair", help="Clear the bad samples' done flags (the depth stage recomputes them).")
        ] = False,
        threads: Annotated[int, typer.Option(help="Decoding threads.")] = 4,
    ) -> None:
        """Check every done sample: each chunk present and decoding (checksums), shapes and dtypes,
        depth finite and in [0, 1]; image and mask: any uint8 value is valid. Bad samples are
        listed by row and id. Exit 1 when any is bad (also with --repair: those samples now wait
        for the depth stage), 0 when all are good."""
        from pdfnet_pipeline import store

        report = store.verify(path, repair=repair, threads=threads, progress=True)
        for line in report.layout:
            typer.echo(f"bad store: {path}: {line} (not repairable sample by sample: rebuild the store)")
        for b in report.bad:
            typer.echo(f"bad sample {b.row} ({b.id}): " + "; ".join(b.problems))
        if not report.checksums:
            typer.echo(
                f"note: {path} was written without chunk checksums: damaged image or mask bytes may "
                f"decode without error (rebuild it to get checksums)"
            )
        typer.echo(f"{path}: {report.checked} done samples checked, {len(report.bad)} bad")
        if report.repaired:
            typer.echo(
                f"repaired: cleared the done flags of samples {report.repaired}; rerun the depth stage with "
                f"the same settings to recompute exactly those"
            )
        raise typer.Exit(0 if report.ok else 1)

    @app.command("export")
    def export(
        path: Annotated[Path, typer.Argument(help="A split store, e.g. stores/DIS-VD.zarr.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
        format: Annotated[str, typer.Option(help="Only h5 (a single-file copy).")] = "h5",
        all_rows: Annotated[bool, typer.Option("--all", help="Also samples not done yet.")] = False,
    ) -> None:
        """Export a store as one HDF5 file (done samples only unless --all)."""
        if format != "h5":
            typer.echo(f"error: unknown format {format!r} (known: h5)", err=True)
            raise typer.Exit(2)
        n = export_h5(path, out, done_only=not all_rows)
        typer.echo(f"wrote {out}: {n} samples")
