"""Speed: a batch is one slice of the dataset's tensors, not B calls to __getitem__; a progress
bar on a terminal only."""

import sys

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from tqdm import tqdm


def make_loader(dataset, batch_size, shuffle, sampler=None) -> DataLoader:
    """The lesson's DataLoader(dataset, batch_size, shuffle=...), but one __getitem__ call per
    batch, with a tensor of its row indices (the notes' calls it once per row and stacks them:
    make bench measures both). A `sampler` replaces the shuffling (torchrun). batch_size=None:
    nothing to stack; collate_fn=tuple: nothing to convert."""
    if sampler is None:
        sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    batches = TensorBatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(dataset, batch_size=None, sampler=batches, collate_fn=tuple)


class TensorBatchSampler(BatchSampler):
    """A BatchSampler whose batches are tensors of row indices, not lists (no drop_last)."""

    def __iter__(self):  # one conversion per epoch, then slices: no Python list per batch
        order = np.fromiter(self.sampler, np.int64, len(self.sampler))
        return iter(torch.from_numpy(order).split(self.batch_size))


def progress_bar(loader):
    """On a terminal, a tqdm bar over the epoch's batches, shown after 2 s and cleared at its
    end; elsewhere (a log, a pipe, CI, another rank) the loader itself, at no cost."""
    if not sys.stdout.isatty():
        return loader
    return tqdm(loader, delay=2, leave=False, unit="batch", file=sys.stdout)
