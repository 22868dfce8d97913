"""Whole examples (lines, paragraphs or documents) in batches padded to their longest, for causal and masked LMs.

``LengthGroupedSampler`` puts examples of similar length together so that there is little padding, and
``MaskingCollate`` masks tokens afresh for each batch (BERT's recipe).
"""

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gpt import IGNORE_INDEX, UserError, check_positive
from gpt.corpus import TokenFile, prepare_examples
from gpt.datamodule import TokenDataModule

log = logging.getLogger(__name__)

Example = tuple[int, torch.Tensor]  # (index in its split, token ids)


class Examples(Dataset):
    """Examples ``start`` to ``stop`` of a prepared directory, each cut to its first ``max_length`` tokens."""

    def __init__(self, data_dir: Path, dtype: str, start: int, stop: int, max_length: int):
        offsets = np.load(data_dir / "offsets.npy")
        self.file = TokenFile(data_dir / "tokens.bin", dtype)
        self.starts = offsets[start:stop]
        self.lengths = np.minimum(offsets[start + 1:stop + 1] - self.starts, max_length)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> Example:
        start = self.starts[i]
        return i, torch.from_numpy(self.file.tokens[start:start + self.lengths[i]].astype(np.int64))


# --------------------------------------------------------------------------- order: length-grouped, per rank


class LengthGroupedSampler(DistributedSampler):
    """The order in which one rank reads the examples, such that each run of ``batch_size`` indices is a batch.

    Each epoch (``set_epoch``) the examples are shuffled alike on every rank, from ``seed`` and the epoch. With
    ``bucketing``, each pool of ``bucket_batches`` global batches is then sorted by length, so that a batch
    holds examples of similar length, and the order of the batches is shuffled. Every global batch is dealt
    out between the ranks, so they read distinct examples (the first few again where the number of examples
    does not divide evenly, so that every rank has as many batches). Lightning uses a ``DistributedSampler``
    as it is under DDP rather than replacing it with its own."""

    def __init__(self, lengths: np.ndarray, batch_size: int, shuffle: bool = True, bucketing: bool = True,
                 bucket_batches: int = 50, seed: int = 0, rank: int = 0, num_replicas: int = 1):
        super().__init__(lengths, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.lengths, self.batch_size = np.asarray(lengths), batch_size
        self.bucketing, self.bucket_batches = bucketing, bucket_batches

    def batches(self) -> list[np.ndarray]:
        """This rank's batches of example indices for the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        order = np.resize(order, self.total_size)  # repeats the first few to a multiple of num_replicas
        step = self.batch_size * self.num_replicas  # examples in one global batch
        if self.bucketing:
            pools = np.split(order, range(step * self.bucket_batches, len(order), step * self.bucket_batches))
            order = np.concatenate([pool[np.argsort(self.lengths[pool], kind="stable")] for pool in pools])
        steps = np.split(order, range(step, len(order), step))
        n_full = len(order) // step
        if self.shuffle:  # the last global batch may be smaller: it stays last, so batches stay aligned
            steps = [steps[i] for i in rng.permutation(n_full)] + steps[n_full:]
        return [s[self.rank::self.num_replicas] for s in steps]

    def __iter__(self) -> Iterator[int]:
        return iter(np.concatenate(self.batches()).tolist())

    def __len__(self) -> int:
        return self.num_samples


# --------------------------------------------------------------------------- batches: padding and masking


class PadCollate:
    """Right-pads the examples of a batch to the longest one. Gives ``input_ids`` (``pad_id`` in padding),
    ``attention_mask`` (True at real tokens) and ``labels``: the input ids, -100 at padding (a causal LM
    shifts them by one)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        ids = [tokens for _, tokens in examples]
        input_ids = pad_sequence(ids, batch_first=True, padding_value=self.pad_id)
        attention_mask = pad_sequence([torch.ones_like(t, dtype=torch.bool) for t in ids], batch_first=True)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": input_ids.masked_fill(~attention_mask, IGNORE_INDEX)}


class MaskingCollate(PadCollate):
    """Pads, then masks: ``probability`` of the real tokens that are not special tokens are chosen; of those
    ``mask_fraction`` become ``[MASK]``, ``random_fraction`` a random (non-special) token and the rest stay.
    ``labels`` hold the original ids at the chosen positions and -100 elsewhere.

    The choice is fresh at every batch, from torch's random generator; with ``seed`` it is a fixed function
    of (seed, example index) instead, so that validation masks the same tokens at every evaluation."""

    def __init__(self, pad_id: int, mask_id: int, special_ids: Iterable[int], vocab_size: int,
                 probability: float = 0.15, mask_fraction: float = 0.8, random_fraction: float = 0.1,
                 seed: int | None = None):
        super().__init__(pad_id)
        check_masking(probability, mask_fraction, random_fraction)
        self.mask_id, self.special_ids = mask_id, torch.tensor(sorted(special_ids))
        self.replacements = torch.tensor(sorted(set(range(vocab_size)) - set(special_ids)))
        self.probability, self.mask_fraction, self.random_fraction = probability, mask_fraction, random_fraction
        self.seed = seed

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        batch = super().__call__(examples)
        ids = batch["input_ids"]
        maskable = batch["attention_mask"] & ~torch.isin(ids, self.special_ids)
        draws = self.draws(examples, ids.shape)
        chosen = maskable & (draws[..., 0] < self.probability)
        action = draws[..., 1]
        randomize = chosen & (action >= self.mask_fraction) & (action < self.mask_fraction + self.random_fraction)
        random_ids = self.replacements[(draws[..., 2] * len(self.replacements)).long()]
        masked = torch.where(chosen & (action < self.mask_fraction), self.mask_id, ids)
        batch["input_ids"] = torch.where(randomize, random_ids, masked)
        batch["labels"] = torch.where(chosen, ids, IGNORE_INDEX)
        return batch

    def draws(self, examples: list[Example], shape: torch.Size) -> torch.Tensor:
        """Three numbers in [0, 1) per token: chosen?, which action, which random token."""
        if self.seed is None:
            return torch.rand(*shape, 3)
        draws = torch.zeros(*shape, 3)
        for row, (index, tokens) in enumerate(examples):
            rng = np.random.default_rng([self.seed, index])
            draws[row, :len(tokens)] = torch.from_numpy(rng.random((len(tokens), 3), dtype=np.float32))
        return draws


def check_masking(probability: float, mask_fraction: float, random_fraction: float) -> None:
    if not 0 < probability < 1:
        raise UserError(f"data.mlm_probability must be between 0 and 1 (exclusive), got {probability}; BERT uses 0.15")
    if not (0 <= mask_fraction <= 1 and 0 <= random_fraction <= 1 and mask_fraction + random_fraction <= 1):
        raise UserError(f"data.mlm_mask_fraction={mask_fraction} and data.mlm_random_fraction={random_fraction} "
                        "must be in [0, 1] with a sum of at most 1; BERT uses 0.8 and 0.1")


# --------------------------------------------------------------------------- the LightningDataModule


class ExamplesDataModule(TokenDataModule):
    """Batches of whole examples (lines, paragraphs or documents) padded to the longest in each batch.

    Causal LM batches by default (labels are the inputs, the LM shifts them); with ``mlm_probability`` set,
    masked-LM batches. Examples longer than ``max_length`` tokens are cut to their first ``max_length``."""

    def __init__(self, text_path: str, cache_dir: str, max_length: int, batch_size: int,
                 example: str = "paragraph", tokenizer: str = "char", vocab_size: int | None = None,
                 val_fraction: float = 0.1, bucketing: bool = True, bucket_batches: int = 50,
                 mlm_probability: float | None = None, mlm_mask_fraction: float = 0.8,
                 mlm_random_fraction: float = 0.1, num_workers: int = 0, seed: int = 1337):
        super().__init__(text_path, cache_dir, batch_size, tokenizer, vocab_size, val_fraction, num_workers, seed,
                         example)
        check_positive("data.max_length", max_length)
        if max_length < 2:
            raise UserError(f"data.max_length must be at least 2 tokens, got {max_length}")
        check_positive("data.bucket_batches", bucket_batches)
        if mlm_probability is not None:
            check_masking(mlm_probability, mlm_mask_fraction, mlm_random_fraction)
        self.example, self._max_length = example, max_length
        self.bucketing, self.bucket_batches = bucketing, bucket_batches
        self.mlm_probability, self.mlm_mask_fraction, self.mlm_random_fraction = \
            mlm_probability, mlm_mask_fraction, mlm_random_fraction

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def masks_tokens(self) -> bool:
        return self.mlm_probability is not None

    def prepare(self) -> dict:
        return prepare_examples(self.text_path, self.data_dir, self.example, self.tokenizer_kind, self.vocab_size,
                                self.val_fraction)

    def check(self) -> None:
        tok = self.tokenizer
        if self.masks_tokens and tok.mask_id is None:
            raise UserError(f"the {tok.kind} tokenizer has no [MASK] token, which a masked LM needs; "
                            "use data.tokenizer=char or data.tokenizer=bpe")
        n_train, n = self.meta["train_examples"], self.meta["examples"]
        too_long = int((np.diff(np.load(self.data_dir / "offsets.npy")) > self.max_length).sum())
        log.info("%s: %d train and %d val %ss (%d empty skipped); %d cut to max_length=%d tokens", self.text_path,
                 n_train, n - n_train, self.example, self.meta["skipped_empty"], too_long, self.max_length)

    def dataset(self, start: int, stop: int) -> Examples:
        return Examples(self.data_dir, self.meta["dtype"], start, stop, self.max_length)

    def val_dataset(self) -> Examples:
        return self.dataset(self.meta["train_examples"], self.meta["examples"])

    def collate(self, seed: int | None) -> PadCollate:
        tok = self.tokenizer
        pad_id = tok.pad_id if tok.pad_id is not None else 0  # any id: padding is masked out and has no label
        if not self.masks_tokens:
            return PadCollate(pad_id)
        return MaskingCollate(pad_id, tok.mask_id, tok.special_ids, tok.vocab_size, self.mlm_probability,
                              self.mlm_mask_fraction, self.mlm_random_fraction, seed)

    def val_example(self) -> dict[str, torch.Tensor]:
        """The first validation example as a batch of one, masked as at every evaluation."""
        return self.collate(self.seed)([self.val_dataset()[0]])

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(0, self.meta["train_examples"]), shuffle=True, masking_seed=None)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset(), shuffle=False, masking_seed=self.seed)  # the same masks every time

    def _loader(self, dataset: Examples, shuffle: bool, masking_seed: int | None) -> DataLoader:
        sampler = LengthGroupedSampler(dataset.lengths, self.batch_size, shuffle, self.bucketing, self.bucket_batches,
                                       self.seed, rank=self.rank, num_replicas=self.world_size)
        return self.loader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=self.collate(masking_seed))


def padding_fraction(loader: Iterable[dict[str, torch.Tensor]]) -> float:
    """Padded tokens / all tokens over the batches of ``loader``."""
    padded = total = 0
    for batch in loader:
        padded += int((~batch["attention_mask"]).sum())
        total += batch["attention_mask"].numel()
    return padded / max(total, 1)
