"""Zarr-backed training / validation data: stores -> uint8 / float16 tensors -> the device.

Layout (docs/CONTRACTS.md, "Store"): `image` (N,S,S,3) uint8, `mask` (N,S,S) uint8,
`depth/{small,base,large,large_1024}` (N,S,S) float16, `done` (N,) bool, `ids` (N,) str.

Design choices (why):
- Stores are opened lazily, once per process (the pid is checked), so a DataLoader worker never
  uses a handle inherited from its parent; the dataset pickles without them (spawn/forkserver).
- Randomness comes from a generator seeded by (seed, epoch, sample index), not from a worker's
  global state: the same run gives the same samples with 0, 1 or 8 workers, and a resumed run
  continues mid-epoch exactly without saving worker RNG states. The sampler yields
  (epoch, index) keys for that reason.
- Samples stay uint8 / float16 up to the device (4x less to copy than float32); `to_device`
  normalises there. The image stays H x W x 3, so the permute on the device gives a channels-last
  tensor for free.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from pdfnet_pipeline.data import augment as aug
from pdfnet_pipeline.store import done_indices, open_read

DEPTH_INPUTS = ("small", "base", "large")
SUPERVISION = "large_1024"


@dataclass
class DataConfig:
    train_stores: list[Path] = field(default_factory=lambda: [Path("stores/DIS-TR.zarr")])
    val_stores: list[Path] = field(default_factory=lambda: [Path("stores/DIS-VD.zarr")])
    depth_inputs: list[str] = field(default_factory=lambda: list(DEPTH_INPUTS))  # drawn 1/len each
    workers: int = 4
    # forkserver: workers start from a clean process. A plain fork copies the parent's thread
    # pools (OpenCV's, zarr's event loop) without their threads, and the first use in the child
    # can hang forever (seen: cv2.setNumThreads in a worker after the parent ran cv2). fork is
    # faster to start and fine in a fresh process that has not used cv2 yet.
    start_method: Literal["fork", "forkserver", "spawn"] = "forkserver"
    prefetch_factor: int = 2
    augment: aug.AugmentConfig = field(default_factory=aug.AugmentConfig)
    # Train on a store the depth stage has not finished (only its done samples). Off by default:
    # a half-built store would silently shrink the epoch and change the order a resume replays.
    allow_incomplete: bool = False


def _check_usable(path: Path, group, need: set[str], done: int, allow_incomplete: bool) -> None:
    """Fail at start-up, naming the store, instead of mid-epoch in a worker."""
    from pdfnet_pipeline.errors import UserError

    maps = set(group.attrs.get("maps") or [k.removeprefix("depth/") for k in ("depth/small", "depth/base",
               "depth/large", "depth/large_1024") if k in group])  # fmt: skip
    if need - maps:
        raise UserError(f"{path} has no depth map(s) {sorted(need - maps)} (it holds {sorted(maps)}): "
                        f"rebuild it with them or set data.depth_inputs to what it holds")  # fmt: skip
    n = int(group["done"].shape[0])
    if done < n and not allow_incomplete:
        raise UserError(f"{path}: only {done}/{n} samples are done; finish the depth stage "
                        f"(rerun it) or set data.allow_incomplete=true")  # fmt: skip


class StoreDataset(Dataset):
    """The done samples of one or more stores, augmented (train) or as stored (validation)."""

    def __init__(
        self,
        paths: list[Path],
        *,
        train: bool,
        seed: int = 0,
        augment: aug.AugmentConfig | None = None,
        depth_inputs: tuple[str, ...] | list[str] = DEPTH_INPUTS,
        allow_incomplete: bool = False,
    ) -> None:
        if not paths:
            raise ValueError("StoreDataset needs at least one store")
        self.paths = [Path(p) for p in paths]
        self.train, self.seed = train, seed
        self.augment = augment if augment is not None else aug.AugmentConfig()
        self.depth_inputs = tuple(depth_inputs) if train else ("large",)
        store_of, rows, ids, sizes = [], [], [], set()
        need = set(self.depth_inputs) | ({SUPERVISION} if train else set())
        for k, path in enumerate(self.paths):
            group = open_read(path)
            done = done_indices(group)
            _check_usable(path, group, need, len(done), allow_incomplete)
            all_ids = np.asarray(group["ids"][:])
            store_of.append(np.full(len(done), k, dtype=np.int32))
            rows.append(done)
            ids.extend(str(all_ids[r]) for r in done)
            sizes.add(int(group["image"].shape[1]))
        if len(sizes) > 1:
            raise ValueError(f"stores of different sizes {sorted(sizes)}: {self.paths}")
        self.size = sizes.pop()
        self.store_of = np.concatenate(store_of)
        self.rows = np.concatenate(rows)
        self.ids = ids
        self._groups: list | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_groups"], state["_pid"] = None, -1  # reopened in the worker
        return state

    def _group(self, k: int):
        if self._groups is None or self._pid != os.getpid():
            self._groups = [open_read(p) for p in self.paths]
            self._pid = os.getpid()
        return self._groups[k]

    def read(self, index: int, depth_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Raw arrays of one sample: image, mask, input depth, supervision depth."""
        g = self._group(int(self.store_of[index]))
        r = int(self.rows[index])
        return g["image"][r], g["mask"][r], g[f"depth/{depth_name}"][r], g[f"depth/{SUPERVISION}"][r]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        depth_name = self.depth_inputs[int(rng.integers(len(self.depth_inputs)))]
        image, mask, depth, target = self.read(index, depth_name)
        if self.train:
            params = aug.sample_params(rng, self.augment, self.size)
            image, mask, (depth, target) = aug.apply(params, image, mask, [depth, target])
        return {
            "image": _tensor(image),  # H x W x 3 uint8
            "mask": _tensor(mask),  # H x W uint8
            "depth": _tensor(depth),  # H x W float16
            "depth_target": _tensor(target),
            "index": index,
            "id": self.ids[index],
        }


def _tensor(a: np.ndarray) -> torch.Tensor:
    # PIL hands back read-only views; torch wants writable, contiguous memory.
    if not (a.flags.writeable and a.flags.c_contiguous):
        a = np.array(a, order="C")
    return torch.from_numpy(a)


class EpochSampler(Sampler):
    """(epoch, index) keys in DistributedSampler order, resumable at a position in the epoch."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        ds = DistributedSampler(
            range(self.n), num_replicas=self.world, rank=self.rank, shuffle=self.shuffle, seed=self.seed
        )
        ds.set_epoch(self.epoch)
        return list(ds)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self.order()[self.start :]])

    def __len__(self) -> int:
        return -(-self.n // self.world) - self.start


class ShardSampler(Sampler):
    """Validation: rank r takes indices r, r + world, ... (no padding, so no sample counts twice)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _worker_init(_: int) -> None:
    # One thread per worker: the workers are the parallelism; more oversubscribes the cores.
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(
    dataset: StoreDataset, sampler: Sampler, cfg: DataConfig, batch_size: int, *, pin_memory: bool = False
) -> DataLoader:
    workers = cfg.workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        multiprocessing_context=cfg.start_method if workers > 0 else None,
        prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
        persistent_workers=workers > 0,  # start the worker processes once per run, not per epoch
        worker_init_fn=_worker_init if workers > 0 else None,
        pin_memory=pin_memory,
        # Own generator: building an iterator must not consume the global torch RNG (exact resume).
        generator=torch.Generator().manual_seed(0),
    )


def to_device(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """Collated uint8 / float16 batch -> model inputs: normalised image, raw depth, mask in [0,1]."""
    nb = device.type == "cuda"
    image = batch["image"].to(device, non_blocking=nb)
    return {
        "image": aug.normalize_image(image),
        "depth": batch["depth"].to(device, non_blocking=nb).unsqueeze(1).float(),
        "mask": batch["mask"].to(device, non_blocking=nb).unsqueeze(1).float() / 255.0,
        "depth_target": batch["depth_target"].to(device, non_blocking=nb).unsqueeze(1).float(),
    }
