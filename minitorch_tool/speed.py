"""Speed: a batch is one slice of the dataset's tensors, not B calls to __getitem__."""

import sys

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from tqdm import tqdm


def make_loader(dataset, batch_size, shuffle, sampler=None) -> DataLoader:
    """The lesson's DataLoader, with one __getitem__ call per batch (row indices), not per row."""
    if sampler is None:
        sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    batches = TensorBatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(dataset, batch_size=None, sampler=batches, collate_fn=tuple)  # as they are


class TensorBatchSampler(BatchSampler):
    """A BatchSampler whose batches are tensors of row indices, not lists (no drop_last)."""

    def __iter__(self):  # one conversion per epoch, then slices: no Python list per batch
        order = np.fromiter(self.sampler, np.int64, len(self.sampler))
        return iter(torch.from_numpy(order).split(self.batch_size))


def progress_bar(loader):
    """On a terminal, a tqdm bar over the epoch's batches; elsewhere, the loader itself."""
    if not sys.stdout.isatty():
        return loader
    return tqdm(loader, delay=2, leave=False, unit="batch", file=sys.stdout)
