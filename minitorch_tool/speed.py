"""Speed: a batch is one slice of the dataset's tensors, not B calls to __getitem__; and a
progress bar, on a terminal only."""

import sys

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from tqdm import tqdm


def make_loader(dataset, batch_size, shuffle, sampler=None) -> DataLoader:
    """The lesson's DataLoader(dataset, batch_size, shuffle=...), each batch fetched as one
    slice: a dataset that holds its rows in tensors (TableDataset) gets a tensor of the
    batch's row indices in one __getitem__ call. A `sampler` of row indices replaces the
    shuffling (torchrun).

    The notes' DataLoader calls __getitem__ once per row and stacks the B rows: make bench
    measures what that costs beside this loader and the in-memory floor (README, Performance).
    batch_size=None: nothing to stack; collate_fn=tuple: nothing to convert.
    """
    if sampler is None:
        sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    batches = TensorBatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(dataset, batch_size=None, sampler=batches, collate_fn=tuple)


class TensorBatchSampler(BatchSampler):
    """A BatchSampler that hands out each batch of row indices as one tensor, not a list;
    drop_last drops a short last batch, as the len() it inherits counts."""

    def __iter__(self):  # one conversion per epoch, then slices: no Python list per batch
        order = np.fromiter(self.sampler, np.int64, len(self.sampler))
        batches = torch.from_numpy(order).split(self.batch_size)
        if self.drop_last and len(order) % self.batch_size:
            batches = batches[:-1]
        return iter(batches)


def progress_bar(loader):
    """On a terminal, a tqdm bar over an epoch's batches, shown once the epoch has taken 2 s
    (a short one never shows it) and cleared at its end, so the epoch lines stay as they are.
    Elsewhere (a log, a pipe, CI, another rank) the loader itself: nothing added, no cost."""
    if not sys.stdout.isatty():
        return loader
    return tqdm(loader, delay=2, leave=False, unit="batch", file=sys.stdout)
