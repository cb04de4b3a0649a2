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

Integrity: image, mask and depth chunks carry a CRC32C checksum (zarr's crc32c codec), so a flipped
or truncated byte fails to decode instead of decoding to plausible garbage (blosc alone has no
checksum: measured, a chunk with 8 flipped bytes decoded without error). A done sample has all
its chunk files (written with write_empty_chunks, so a missing file is damage, not an all-zero
sample). `verify` checks every done sample; `Store.sample` names the store, sample and array of a
chunk that does not decode (`StoreReadError`); a failed write (disk full, I/O error) is a
`StoreWriteError` naming the store and sample, which then stays not done. Zarr writes each chunk
file under a temporary name and renames it, and `done` is written last, so a reader that serves
only done samples never sees a half-written one.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pdfnet_pipeline.errors import UserError
from pdfnet_pipeline.store_chunks import ChunkReader, read_row

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


class StoreWriteError(StoreError):
    """A write failed (disk full, I/O error); the message names the store, array and sample."""


class StoreReadError(StoreError):
    """A chunk of a done sample does not decode; the message names the store, sample and array."""


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
    from zarr.codecs import BloscCodec, Crc32cCodec

    # Measured at 1024² (decode, min of 10): real photos lz4 2.4-2.6 MB at 1.7-2.6 ms vs zstd-1
    # bitshuffle 1.8-1.9 MB at 6-9.5 ms; a depth map lz4 byte-shuffled 0.66 MB at 1.8 ms vs zstd-1
    # 0.53 MB at 4.0 ms and zstd-1 bitshuffle 0.61 MB at 5.5 ms. The trainer decodes every sample
    # every epoch (a fifth of a sample's time with zstd): speed over ~25% size. The CRC32C (4 bytes
    # per chunk, hardware-accelerated) turns any damaged chunk into a decode error.
    if kind == "done":
        return None  # a 1-byte raw chunk: its write cannot be left half-done
    shuffle = "noshuffle" if kind == "u8" else "shuffle"  # bytes of a float16 grouped: smaller, faster
    return [BloscCodec(cname="lz4", clevel=5, shuffle=shuffle), Crc32cCodec()]


def create(path: Path, spec: StoreSpec) -> Store:
    """Create the layout (fails if `path` exists: never an overwriting mode)."""
    try:
        return _create(path, spec)
    except FileExistsError:
        raise
    except OSError as err:
        raise StoreWriteError(
            f"cannot create store {path}: {err}; free space or fix the disk, delete {path} and rerun"
        ) from err


def _create(path: Path, spec: StoreSpec) -> Store:
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
    if key == "manifest_sha256":  # the usual case: the dataset was re-scanned or re-split
        return (
            f"another manifest: this split's entries (ids, files, hashes) differ, sha256 {str(have)[:12]}... "
            f"in the store, {str(want)[:12]}... in this run's manifest"
        )
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
        self._handles: dict = {}  # array name -> Zarr array of this process (opening one reads its zarr.json)
        attrs = dict(self.group.attrs)
        self.attrs: dict = attrs  # a snapshot: provenance as written when opened
        self.split: str = attrs.get("split", self.path.name.removesuffix(".zarr"))
        self.n: int = int(self.group["done"].shape[0])
        self.size: int = int(self.group["image"].shape[1])
        self.maps: tuple[str, ...] = tuple(attrs.get("maps") or ())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_group": None, "_pid": -1, "_handles": {}}

    @property
    def group(self):
        if self._group is None or self._pid != os.getpid():
            self._group, self._pid = _open_group(self.path, self.mode), os.getpid()
            self._handles = {}
        return self._group

    def _array(self, name: str) -> tuple:
        """(array, ChunkReader or None) of `name`, opened once per process: a sample read is 4-5
        arrays, and opening each anew cost ~0.7 ms of metadata read and parse."""
        g = self.group  # first, so that a new process drops its parent's handles
        if name not in self._handles:
            array = g[name]
            self._handles[name] = (array, ChunkReader.of(array))
        return self._handles[name]

    # -- what it holds
    @property
    def manifest_sha256(self) -> str | None:
        return self.attrs.get("manifest_sha256")

    @property
    def models(self) -> dict:
        """Map name -> provenance of the model that computed it (arch, weights, revision)."""
        return self.attrs.get("models", {})

    @property
    def preprocessing(self) -> dict:
        """How the maps were computed (aspect, input_side, posemb, ...: depth.stage.preprocessing)."""
        return self.attrs.get("preprocessing", {})

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
        """Image, mask and the depth `maps` of sample `row`; StoreReadError names a chunk that does
        not decode."""
        names = [IMAGE, MASK, *[f"{DEPTH}/{m}" for m in maps]]
        handles = [self._array(name) for name in names]  # a missing array is refused at open time, not damage
        values = [self._read(name, *handle, row) for name, handle in zip(names, handles)]
        return Sample(values[0], values[1], dict(zip(maps, values[2:])))

    def _read(self, name: str, array, reader: ChunkReader | None, row: int) -> np.ndarray:
        try:
            return read_row(array, reader, row)
        except Exception as err:  # blosc RuntimeError, crc32c ValueError, EIO OSError: all damage here
            raise StoreReadError(
                f"{self.path}: sample {row} ({self._id(row)}): {name} does not decode "
                f"({type(err).__name__}: {err}); find every damaged sample with `pdfnet-pipeline store "
                f"verify {self.path}`, then --repair and rerun the depth stage"
            ) from err

    def _id(self, row: int) -> str:
        try:
            return str(self.group[IDS][row])
        except Exception:  # the ids chunk itself may be the damaged one
            return "id unreadable"

    def arrays(self) -> dict:
        """Name -> Zarr array of every per-sample array, in layout order (for exporters)."""
        names = [IMAGE, MASK, *[f"{DEPTH}/{m}" for m in self.maps], DONE, ORIG_SIZE]
        return {name: self.group[name] for name in names}

    # -- writing (open_write only)
    def write_sample(self, row: int, image: np.ndarray, mask: np.ndarray, depths: dict[str, np.ndarray]) -> None:
        """All arrays of sample `row`, then its done flag: a crash or a failed write in between
        leaves it not done. Every chunk file is written, even an all-zero one, so a done sample
        without one is damage (see verify)."""
        g = self.group
        parts = [(IMAGE, image), (MASK, mask)]
        parts += [(f"{DEPTH}/{name}", value.astype(np.float16, copy=False)) for name, value in depths.items()]
        steps = [(name, g[name].with_config({"write_empty_chunks": True}), value) for name, value in parts]
        for name, array, value in [*steps, (DONE, g[DONE], True)]:
            try:
                array[row] = value
            except OSError as err:
                raise StoreWriteError(
                    f"cannot write {name} of sample {row} to {self.path}: {err}; the sample stays not done: "
                    f"free space or fix the disk, then rerun the depth stage to resume"
                ) from err

    def touch(self, **attrs) -> None:
        """Record the end of a run (rank 0 only): `updated` plus any extra attributes."""
        try:
            self.group.attrs.update({"updated": _now(), **attrs})
        except OSError as err:  # zarr replaces zarr.json atomically: the old attributes stay
            raise StoreWriteError(f"cannot update the attributes of {self.path}: {err}") from err
        self.attrs = dict(self.group.attrs)


@dataclass
class BadSample:
    row: int
    id: str
    problems: list[str]  # one line per damaged array


@dataclass
class VerifyReport:
    path: Path
    checked: int = 0  # done samples checked
    bad: list[BadSample] = field(default_factory=list)
    layout: list[str] = field(default_factory=list)  # damage to the store as a whole: rebuild it
    checksums: bool = True  # False: written before chunk checksums (flipped bytes may decode)
    repaired: list[int] = field(default_factory=list)  # rows whose done flag was cleared

    @property
    def ok(self) -> bool:
        return not self.bad and not self.layout


def verify(path: Path | str, *, repair: bool = False, threads: int = 4, progress: bool = False) -> VerifyReport:
    """Check every done sample of the store at `path`.

    Per sample and array (image, mask, each depth map): the chunk file is there and decodes
    (checksum included); depth maps are finite and within [0, 1]. Shapes and dtypes are checked
    once per array against the layout (a decoded chunk has its array's shape and dtype). Image
    and mask have no value constraint: any uint8 is valid (the mask is resized with antialiasing,
    so grey edges are legitimate), so for them valid means present, decodable, right shape and
    dtype. `repair`: under the writer lock, clear the done flags of the bad samples, so that the
    depth stage (same settings) recomputes exactly those."""
    st = open_read(path)  # a missing or foreign store is refused before any lock file is made
    with writer_lock(st.path) if repair else nullcontext():
        report = _check_store(st, threads, progress)
        if repair and report.bad:
            done = Store(st.path, "r+").group[DONE]
            for b in report.bad:
                try:
                    done[b.row] = False
                except OSError as err:
                    raise StoreWriteError(f"cannot clear the done flag of sample {b.row} in {st.path}: {err}") from err
                report.repaired.append(b.row)
    return report


def _layout_arrays(st: Store, report: VerifyReport) -> dict:
    """Name -> Zarr array of the per-sample data arrays whose shape and dtype match the layout."""
    n, s = st.n, st.size
    expected = {IMAGE: ((n, s, s, 3), "uint8"), MASK: ((n, s, s), "uint8")}
    expected.update({f"{DEPTH}/{m}": ((n, s, s), "float16") for m in st.maps})
    arrays = {}
    for name, (shape, dtype) in expected.items():
        try:
            array = st.group[name]
        except KeyError:
            report.layout.append(f"{name}: missing")
            continue
        if tuple(array.shape) != shape or str(array.dtype) != dtype:
            report.layout.append(f"{name}: shape {array.shape} {array.dtype}, the layout says {shape} {dtype}")
            continue
        arrays[name] = array
    return arrays


def _check_store(st: Store, threads: int, progress: bool) -> VerifyReport:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    report = VerifyReport(st.path)
    arrays = _layout_arrays(st, report)
    try:
        ids, rows = st.ids, st.done_rows()
        if st.orig_sizes.shape != (st.n, 2):
            report.layout.append(f"{ORIG_SIZE}: shape {st.orig_sizes.shape}, the layout says ({st.n}, 2)")
    except Exception as err:  # ids / done / orig_size unreadable: no sample can be named
        report.layout.append(f"ids, done or orig_size do not decode ({type(err).__name__}: {err})")
        return report
    report.checksums = all(any(type(c).__name__ == "Crc32cCodec" for c in a.metadata.codecs) for a in arrays.values())
    readers = {name: ChunkReader.of(array) for name, array in arrays.items()}  # the reads the trainer does
    with ThreadPoolExecutor(max(1, threads)) as pool:  # decoding releases the GIL
        checks = pool.map(lambda row: _check_sample(st.path, arrays, readers, int(row)), rows)
        for row, problems in zip(rows, tqdm(checks, total=len(rows), desc="verify", disable=not progress)):
            if problems:
                report.bad.append(BadSample(int(row), ids[row], problems))
    report.checked = len(rows)
    return report


def _check_sample(path: Path, arrays: dict, readers: dict, row: int) -> list[str]:
    problems = []
    for name, array in arrays.items():
        key = array.metadata.encode_chunk_key((row,) + (0,) * (array.ndim - 1))
        if not (path / array.path / key).is_file():
            problems.append(f"{name}: chunk file {array.path}/{key} missing")
            continue
        try:
            value = read_row(array, readers[name], row)
        except Exception as err:
            problems.append(f"{name}: does not decode ({type(err).__name__}: {err})")
            continue
        if name.startswith(f"{DEPTH}/"):
            v = value.astype(np.float32)
            if not np.isfinite(v).all():
                problems.append(f"{name}: {int((~np.isfinite(v)).sum())} non-finite values")
            elif v.min() < 0 or v.max() > 1:
                problems.append(f"{name}: values in [{v.min()}, {v.max()}], outside [0, 1]")
    return problems


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
