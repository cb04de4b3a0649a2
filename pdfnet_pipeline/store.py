"""The Zarr v3 store of one split (`STORES/<split>.zarr`): layout, provenance, done flags, locking.

Layout (S = attrs["size"]; one chunk per sample per array so ranks and resumed runs write
disjoint files):
  image (N,S,S,3) uint8 · mask (N,S,S) uint8 · depth/<map> (N,S,S) float16 in [0,1]
  done (N,) bool, written after all of a sample's arrays · ids (N,) str · orig_size (N,2) int32 (H,W)

A store is tied to the manifest split it was built from and to its schema version: opening it for
writing with another manifest, size, set of maps or model weights is refused, so a rerun can only
ever complete the same store. The writer lock is an fcntl.flock on `<split>.zarr.lock` beside the
store: the kernel drops it when the process dies (kill -9 included), so a killed run can be resumed
while a live one cannot be joined.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pdfnet_pipeline.errors import UserError

SCHEMA_VERSION = 1
DEPTH_MAPS = ("small", "base", "large", "large_1024")


class StoreError(UserError, ValueError):
    """A store that cannot be used for what was asked; the message says why and what to do."""


class StoreBusyError(StoreError):
    """Another live process holds the store's writer lock."""


@dataclass
class StoreSpec:
    """What a store is built from; a rerun must present the same spec."""

    split: str
    ids: list[str]
    orig_sizes: list[tuple[int, int]]  # (H, W) after EXIF orientation
    size: int
    manifest_sha256: str
    maps: tuple[str, ...] = DEPTH_MAPS
    models: dict = field(default_factory=dict)  # map name -> provenance (arch, weights, revision)
    preprocessing: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def software_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("pdfnet-pipeline", "torch", "transformers", "zarr", "numpy", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _codecs(kind: str):
    from zarr.codecs import BloscCodec

    # Measured on a 1024² photo and a depth map: blosc zstd-1 with bitshuffle gives float16 depth
    # ~0.9 MB at ~10 ms (plain zstd: 1.16 MB), images ~1.9 MB at ~30 ms.
    if kind == "done":
        return None  # a 1-byte raw chunk: its write cannot be left half-done
    return BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


def create(path: Path, spec: StoreSpec):
    """Create the layout (fails if `path` exists: never an overwriting mode)."""
    import zarr

    n, s = len(spec.ids), spec.size
    root = zarr.open_group(str(path), mode="w-")
    root.create_array("image", shape=(n, s, s, 3), chunks=(1, s, s, 3), dtype="uint8", compressors=_codecs("u8"))
    root.create_array("mask", shape=(n, s, s), chunks=(1, s, s), dtype="uint8", compressors=_codecs("u8"))
    depth = root.create_group("depth")
    for name in spec.maps:
        depth.create_array(name, shape=(n, s, s), chunks=(1, s, s), dtype="float16", compressors=_codecs("f16"))
    root.create_array("done", shape=(n,), chunks=(1,), dtype="bool", fill_value=False, compressors=_codecs("done"))
    ids = root.create_array("ids", shape=(n,), chunks=(max(n, 1),), dtype=str)
    sizes = root.create_array("orig_size", shape=(n, 2), chunks=(max(n, 1), 2), dtype="int32")
    if n:
        ids[:] = np.asarray(spec.ids, dtype=str)
        sizes[:] = np.asarray(spec.orig_sizes, dtype=np.int32).reshape(n, 2)
    now = _now()
    # Attributes last: a store without them is an interrupted creation (see open_write).
    root.attrs.update(
        {
            "format": "pdfnet-store",
            "schema_version": SCHEMA_VERSION,
            "split": spec.split,
            "n": n,
            "size": s,
            "manifest_sha256": spec.manifest_sha256,
            "maps": list(spec.maps),
            "models": spec.models,
            "preprocessing": spec.preprocessing,
            "versions": spec.versions or software_versions(),
            "created": now,
            "updated": now,
        }
    )
    return root


def _check_schema(attrs, path: Path) -> None:
    if attrs.get("format") != "pdfnet-store":
        raise StoreError(f"{path}: not a pdfnet store (no 'format: pdfnet-store' attribute)")
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: store schema version {version}, this code reads version {SCHEMA_VERSION}; "
            f"rebuild it with `pdfnet-pipeline stage run depth` into a new stores folder"
        )


def _check_same(group, spec: StoreSpec, path: Path) -> None:
    attrs = dict(group.attrs)
    wanted = json.loads(
        json.dumps(
            {
                "split": spec.split,
                "manifest_sha256": spec.manifest_sha256,
                "size": spec.size,
                "n": len(spec.ids),
                "maps": list(spec.maps),
                "models": spec.models,
                "preprocessing": spec.preprocessing,
            }
        )
    )  # compare as stored: JSON turns tuples into lists
    diff = [k for k, v in wanted.items() if attrs.get(k) != v]
    if diff:
        detail = "; ".join(f"{k}: store has {attrs.get(k)!r}, this run {wanted[k]!r}" for k in diff)
        raise StoreError(
            f"{path} was built from other inputs ({detail}). Refusing to mix them: use another "
            f"stores folder or delete {path}."
        )
    if list(group["ids"][:]) != list(spec.ids):
        raise StoreError(f"{path}: sample ids differ from the manifest's {spec.split} split")


def open_write(path: Path, spec: StoreSpec):
    """The store at `path` for (re)writing: created when missing, else checked against `spec`."""

    path = Path(path)
    if not path.exists():
        return create(path, spec)
    group = _open_group(path, "r+")
    if not group.attrs.get("format"):
        # Creation was interrupted before the attributes (nothing computed yet); still, never
        # delete anything silently.
        raise StoreError(f"{path}: incomplete store (its creation was interrupted); delete it and rerun")
    _check_schema(group.attrs, path)
    _check_same(group, spec, path)
    return group


def open_read(path: Path | str):
    """A store group opened read-only, schema-checked."""

    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store (run `pdfnet-pipeline stage run depth`)")
    group = _open_group(path, "r")
    _check_schema(group.attrs, path)
    return group


def _open_group(path: Path, mode: str):
    """zarr.open_group, with an empty or foreign folder reported as a StoreError."""
    import zarr

    try:
        return zarr.open_group(str(path), mode=mode)
    except (zarr.errors.NodeNotFoundError, FileNotFoundError) as err:
        raise StoreError(f"{path}: not a Zarr store (empty or foreign folder: {err}); delete it and rerun") from None


def done_indices(group) -> np.ndarray:
    return np.flatnonzero(np.asarray(group["done"][:], dtype=bool))


def write_sample(group, index: int, image: np.ndarray, mask: np.ndarray, depths: dict[str, np.ndarray]) -> None:
    """All arrays of sample `index`, then its done flag (a crash in between leaves it not done)."""
    group["image"][index] = image
    group["mask"][index] = mask
    for name, value in depths.items():
        group[f"depth/{name}"][index] = value.astype(np.float16, copy=False)
    group["done"][index] = True


def touch(group, **attrs) -> None:
    """Record the end of a run (rank 0 only): `updated` plus any extra attributes."""
    group.attrs.update({"updated": _now(), **attrs})


def lock_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextmanager
def writer_lock(path: Path) -> Iterator[Path]:
    """Exclusive, non-blocking flock for writing the store at `path`; StoreBusyError if held."""
    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise StoreBusyError(
                f"{path} is being written by another run (pid {holder} holds {lp}); "
                f"wait for it or stop it, then rerun to finish the missing samples"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lp
    finally:
        os.close(fd)  # closing drops the flock; the file stays (unlinking would race)


def split_status(path: Path | str) -> dict:
    """Per-store summary for `stage status`: split, n, done, size, maps, models, timestamps."""
    path = Path(path)
    base = {"path": str(path), "split": path.name.removesuffix(".zarr")}
    if not path.exists():
        return {**base, "exists": False, "n": 0, "done": 0, "complete": False}
    group = open_read(path)
    attrs = dict(group.attrs)
    n = int(attrs.get("n", group["done"].shape[0]))
    done = int(np.count_nonzero(group["done"][:]))
    return {
        **base,
        "exists": True,
        "split": attrs.get("split", base["split"]),
        "n": n,
        "done": done,
        "complete": done == n,
        "size": attrs.get("size"),
        "maps": attrs.get("maps"),
        "models": {k: v.get("weights") for k, v in attrs.get("models", {}).items()},
        "skipped": attrs.get("skipped", []),
        "schema_version": attrs.get("schema_version"),
        "created": attrs.get("created"),
        "updated": attrs.get("updated"),
    }
