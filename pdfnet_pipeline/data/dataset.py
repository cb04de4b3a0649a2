"""Zarr-backed training / validation data: stores -> uint8 / float16 tensors -> the device.

Design choices (why):
- Stores (store.Store) reopen lazily in each process, so a DataLoader worker never uses a handle
  inherited from its parent; the dataset pickles without them (forkserver workers).
- Randomness comes from a generator seeded by (seed, epoch, sample index), not from a worker's
  global state: the same run gives the same samples with 0, 1 or 8 workers, and a resumed run
  continues mid-epoch exactly without saving worker RNG states. The sampler yields
  (epoch, index) keys for that reason.
- Samples stay uint8 / float16 up to the device; `data.batch.model_inputs` converts them there.
- Only the maps a sample needs are read: the drawn input depth, plus the supervision map when
  training. The stores are checked for them at start-up, by name.
- A chunk that does not decode (store.StoreReadError) is the loop's decision (on_error): in a
  DataLoader worker an exception reaches the main process as a traceback string, so with
  `flag_unreadable` the sample comes back as zeros with its message in "error" instead, and the
  main process stops with that one line or skips the sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from pdfnet_pipeline import preempt, store, workers
from pdfnet_pipeline.data import augment as aug

VAL_DEPTH = "large"  # validation and eval: the paper's inference input


@dataclass
class DataConfig:
    train_stores: list[Path] = field(default_factory=lambda: [Path("stores/DIS-TR.zarr")])
    val_stores: list[Path] = field(default_factory=lambda: [Path("stores/DIS-VD.zarr")])
    depth_inputs: list[str] = field(default_factory=lambda: list(store.DEPTH_INPUTS))  # drawn 1/len each
    workers: int = 4
    # forkserver: workers fork from a server that imported this module once (workers.context), not
    # from the parent: a plain fork copies the parent's thread pools (OpenCV's, zarr's event loop)
    # without their threads, and the first use in the child can hang forever (seen:
    # cv2.setNumThreads in a worker after the parent ran cv2).
    start_method: Literal["fork", "forkserver", "spawn"] = "forkserver"
    prefetch_factor: int = 2
    augment: aug.AugmentConfig = field(default_factory=aug.AugmentConfig)
    # Train on a store the depth stage has not finished (only its done samples). Off by default:
    # a half-built store would silently shrink the epoch and change the order a resume replays.
    allow_incomplete: bool = False
    # A sample whose chunk does not decode: stop naming the store and sample, or skip it (logged
    # and counted in metrics.jsonl; `pdfnet-pipeline store verify --repair` + the depth stage fix it).
    on_error: Literal["stop", "skip"] = "stop"


class StoreDataset(Dataset):
    """The done samples of one or more stores, augmented (train) or as stored (validation)."""

    def __init__(
        self,
        paths: list[Path],
        *,
        train: bool,
        seed: int = 0,
        augment: aug.AugmentConfig | None = None,
        depth_inputs: tuple[str, ...] | list[str] = store.DEPTH_INPUTS,
        allow_incomplete: bool = False,
        flag_unreadable: bool = False,
    ) -> None:
        if not paths:
            raise ValueError("StoreDataset needs at least one store")
        self.train, self.seed, self.flag_unreadable = train, seed, flag_unreadable
        self.augment = augment if augment is not None else aug.AugmentConfig()
        self.depth_inputs = tuple(depth_inputs) if train else (VAL_DEPTH,)
        self.extra_maps = (store.SUPERVISION,) if train else ()
        purpose = "training: input depth + supervision" if train else "validation input depth"
        self.stores = [store.open_read(p, (*self.depth_inputs, *self.extra_maps), purpose) for p in paths]
        store_of, rows, ids = [], [], []
        for k, st in enumerate(self.stores):
            st.require_complete(allow_incomplete)
            done = st.done_rows()
            all_ids = st.ids
            store_of.append(np.full(len(done), k, dtype=np.int32))
            rows.append(done)
            ids.extend(all_ids[r] for r in done)
        sizes = sorted({st.size for st in self.stores})
        if len(sizes) > 1:
            raise ValueError(f"stores of different sizes {sizes}: {[str(st.path) for st in self.stores]}")
        self.size = sizes[0]
        self.store_of = np.concatenate(store_of)
        self.rows = np.concatenate(rows)
        self.ids = ids

    def __len__(self) -> int:
        return len(self.rows)

    def locate(self, index: int) -> tuple[store.Store, int]:
        """The store and row of sample `index`."""
        return self.stores[int(self.store_of[index])], int(self.rows[index])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        depth_name = self.depth_inputs[int(rng.integers(len(self.depth_inputs)))]
        st, row = self.locate(index)
        try:
            s = st.sample(row, (depth_name, *self.extra_maps))
        except store.StoreReadError as err:
            if not self.flag_unreadable:
                raise
            return self._unreadable(index, str(err))
        image, mask, depth = s.image, s.mask, s.depth[depth_name]
        item = {"index": index, "id": self.ids[index]}
        if self.flag_unreadable:
            item["error"] = ""
        if self.train:
            params = aug.sample_params(rng, self.augment, self.size)
            image, mask, (depth, target) = aug.apply(params, image, mask, [depth, s.depth[store.SUPERVISION]])
            item["depth_target"] = _tensor(target)
        item.update(image=_tensor(image), mask=_tensor(mask), depth=_tensor(depth))  # uint8 / float16
        return item

    def _unreadable(self, index: int, message: str) -> dict:
        """A sample that did not decode: zeros of the right shapes (the batch still collates) and
        the message; the loop drops it or stops."""
        s = self.size
        item = {"index": index, "id": self.ids[index], "error": message}
        item.update(image=torch.zeros(s, s, 3, dtype=torch.uint8), mask=torch.zeros(s, s, dtype=torch.uint8))
        item["depth"] = torch.zeros(s, s, dtype=torch.float16)
        if self.train:
            item["depth_target"] = torch.zeros(s, s, dtype=torch.float16)
        return item


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

    def per_rank(self) -> int:
        """Samples each rank sees per epoch (DistributedSampler pads the last round)."""
        return -(-self.n // self.world)

    def __len__(self) -> int:
        return self.per_rank() - self.start


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

    preempt.shield_worker()  # a job-wide SIGTERM is the main process's to handle
    workers.keep_freed_memory()  # samples reuse the last one's pages instead of faulting in anew
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def start_workers_early(cfg: DataConfig) -> None:
    """Start the forkserver that make_loader's workers fork from, now: it returns at once, and the
    server's imports (torch, ~2 s here) then overlap with whatever the caller does next (the
    trainer builds its model) instead of delaying the first batch."""
    if cfg.workers > 0:
        workers.context((__name__,), cfg.start_method)  # starts a server for "forkserver" only


def make_loader(
    dataset: StoreDataset,
    sampler: Sampler,
    cfg: DataConfig,
    batch_size: int,
    *,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """`pin_memory` on CUDA (page-locked batches copy with non_blocking); `drop_last` when the
    model is compiled for one static shape (training with compile=true)."""
    n = cfg.workers
    if n > 0:
        workers.kill_shielded_at_exit()  # _worker_init ignores SIGTERM
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=n,
        multiprocessing_context=workers.context((__name__,), cfg.start_method) if n > 0 else None,
        prefetch_factor=cfg.prefetch_factor if n > 0 else None,
        persistent_workers=n > 0,  # start the worker processes once per run, not per epoch
        worker_init_fn=_worker_init if n > 0 else None,
        pin_memory=pin_memory,
        # Own generator: building an iterator must not consume the global torch RNG (exact resume).
        generator=torch.Generator().manual_seed(0),
    )
