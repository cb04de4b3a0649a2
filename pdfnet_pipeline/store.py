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
# Array names: the layout's only spelling. Other modules use these constants and Store's methods.
IMAGE, MASK, DEPTH, DONE, IDS, ORIG_SIZE = "image", "mask", "depth", "done", "ids", "orig_size"
DEPTH_INPUTS = ("small", "base", "large")  # DAM v2 at the 518 input: the network's depth input
SUPERVISION = "large_1024"  # DAM v2 large at the 1024 rule's input (1036): the depth supervision
DEPTH_MAPS = (*DEPTH_INPUTS, SUPERVISION)


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


def create(path: Path, spec: StoreSpec) -> Store:
    """Create the layout (fails if `path` exists: never an overwriting mode)."""
    import zarr

    n, s = len(spec.ids), spec.size
    root = zarr.open_group(str(path), mode="w-")
    root.create_array(IMAGE, shape=(n, s, s, 3), chunks=(1, s, s, 3), dtype="uint8", compressors=_codecs("u8"))
    root.create_array(MASK, shape=(n, s, s), chunks=(1, s, s), dtype="uint8", compressors=_codecs("u8"))
    depth = root.create_group(DEPTH)
    for name in spec.maps:
        depth.create_array(name, shape=(n, s, s), chunks=(1, s, s), dtype="float16", compressors=_codecs("f16"))
    root.create_array(DONE, shape=(n,), chunks=(1,), dtype="bool", fill_value=False, compressors=_codecs("done"))
    ids = root.create_array(IDS, shape=(n,), chunks=(max(n, 1),), dtype=str)
    sizes = root.create_array(ORIG_SIZE, shape=(n, 2), chunks=(max(n, 1), 2), dtype="int32")
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
    return Store(path, "r+", root)


def _check_schema(attrs, path: Path) -> None:
    if attrs.get("format") != "pdfnet-store":
        raise StoreError(f"{path}: not a pdfnet store (no 'format: pdfnet-store' attribute)")
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: store schema version {version}, this code reads version {SCHEMA_VERSION}; "
            f"rebuild it with `pdfnet-pipeline stage run depth` into a new stores folder"
        )


def _difference(key: str, have, want) -> str:
    """`key: store has X, this run Y`; for two tables only their differing entries (a whole
    preprocessing table would hide the one setting that changed)."""
    if isinstance(have, dict) and isinstance(want, dict):
        keys = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
        return "; ".join(f"{key}.{k}: store has {have.get(k)!r}, this run {want.get(k)!r}" for k in keys)
    return f"{key}: store has {have!r}, this run {want!r}"


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
        detail = "; ".join(_difference(k, attrs.get(k), wanted[k]) for k in diff)
        raise StoreError(
            f"{path} was built from other inputs ({detail}). Refusing to mix them: use another "
            f"stores folder or delete {path}."
        )
    if list(group[IDS][:]) != list(spec.ids):
        raise StoreError(f"{path}: sample ids differ from the manifest's {spec.split} split")


def open_write(path: Path, spec: StoreSpec) -> Store:
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
    return Store(path, "r+", group)


def open_read(path: Path | str, maps: tuple[str, ...] | list[str] = (), purpose: str = "") -> Store:
    """A store opened read-only, schema-checked; refused by name when it lacks one of `maps`."""

    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store (run `pdfnet-pipeline stage run depth`)")
    group = _open_group(path, "r")
    _check_schema(group.attrs, path)
    st = Store(path, "r", group)
    st.require(maps, purpose)
    return st


def _open_group(path: Path, mode: str):
    """zarr.open_group, with an empty or foreign folder reported as a StoreError."""
    import zarr

    try:
        return zarr.open_group(str(path), mode=mode)
    except (zarr.errors.NodeNotFoundError, FileNotFoundError) as err:
        raise StoreError(f"{path}: not a Zarr store (empty or foreign folder: {err}); delete it and rerun") from None


@dataclass
class Sample:
    """One stored sample: the S x S image and mask and the requested depth maps."""

    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) uint8
    depth: dict[str, np.ndarray]  # map name -> (S, S) float16 in [0, 1]


class Store:
    """One split's store. The only reader and writer of its Zarr keys.

    Pickles by path and mode and reopens lazily in the process that uses it, so a DataLoader
    worker never touches a handle inherited from its parent."""

    def __init__(self, path: Path, mode: str, group=None) -> None:
        self.path, self.mode = Path(path), mode
        self._group, self._pid = group, os.getpid() if group is not None else -1
        attrs = dict(self.group.attrs)
        self.attrs: dict = attrs  # a snapshot: provenance as written when opened
        self.split: str = attrs.get("split", self.path.name.removesuffix(".zarr"))
        self.n: int = int(self.group["done"].shape[0])
        self.size: int = int(self.group["image"].shape[1])
        self.maps: tuple[str, ...] = tuple(attrs.get("maps") or ())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_group": None, "_pid": -1}

    @property
    def group(self):
        if self._group is None or self._pid != os.getpid():
            self._group, self._pid = _open_group(self.path, self.mode), os.getpid()
        return self._group

    # -- what it holds
    @property
    def manifest_sha256(self) -> str | None:
        return self.attrs.get("manifest_sha256")

    @property
    def models(self) -> dict:
        """Map name -> provenance of the model that computed it (arch, weights, revision)."""
        return self.attrs.get("models", {})

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in self.group["ids"][:]]

    @property
    def orig_sizes(self) -> np.ndarray:
        """(N, 2) int32: each sample's (H, W) after EXIF orientation."""
        return np.asarray(self.group["orig_size"][:])

    def done(self) -> np.ndarray:
        """(N,) bool, read now (a writer may be filling the store)."""
        return np.asarray(self.group["done"][:], dtype=bool)

    def done_rows(self) -> np.ndarray:
        return np.flatnonzero(self.done())

    def require(self, maps, purpose: str = "") -> None:
        """StoreError naming the maps this store lacks (checked at start-up, not mid-epoch)."""
        missing = sorted(set(maps) - set(self.maps))
        if missing:
            why = f" ({purpose})" if purpose else ""
            raise StoreError(
                f"{self.path} has no depth map(s) {missing}{why}; it holds {sorted(self.maps)}: "
                f"rebuild it with them (stage depth, maps=...) or ask for what it holds"
            )

    def require_complete(self, allow_incomplete: bool = False) -> None:
        done = int(np.count_nonzero(self.done()))
        if done < self.n and not allow_incomplete:
            raise StoreError(
                f"{self.path}: only {done}/{self.n} samples are done; finish the depth stage "
                f"(rerun it) or allow an incomplete store (data.allow_incomplete=true)"
            )

    def sample(self, row: int, maps: tuple[str, ...] | list[str] = ()) -> Sample:
        g = self.group
        return Sample(g[IMAGE][row], g[MASK][row], {m: g[f"{DEPTH}/{m}"][row] for m in maps})

    def arrays(self) -> dict:
        """Name -> Zarr array of every per-sample array, in layout order (for exporters)."""
        names = [IMAGE, MASK, *[f"{DEPTH}/{m}" for m in self.maps], DONE, ORIG_SIZE]
        return {name: self.group[name] for name in names}

    # -- writing (open_write only)
    def write_sample(self, row: int, image: np.ndarray, mask: np.ndarray, depths: dict[str, np.ndarray]) -> None:
        """All arrays of sample `row`, then its done flag (a crash in between leaves it not done)."""
        g = self.group
        g[IMAGE][row] = image
        g[MASK][row] = mask
        for name, value in depths.items():
            g[f"{DEPTH}/{name}"][row] = value.astype(np.float16, copy=False)
        g[DONE][row] = True

    def touch(self, **attrs) -> None:
        """Record the end of a run (rank 0 only): `updated` plus any extra attributes."""
        self.group.attrs.update({"updated": _now(), **attrs})
        self.attrs = dict(self.group.attrs)


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
    st = open_read(path)
    done = int(np.count_nonzero(st.done()))
    return {
        **base,
        "exists": True,
        "split": st.split,
        "n": st.n,
        "done": done,
        "complete": done == st.n,
        "size": st.size,
        "maps": list(st.maps),
        "models": {k: v.get("weights") for k, v in st.models.items()},
        "skipped": st.attrs.get("skipped", []),
        "schema_version": st.attrs.get("schema_version"),
        "created": st.attrs.get("created"),
        "updated": st.attrs.get("updated"),
    }
