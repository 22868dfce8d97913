"""Whole examples (lines, paragraphs or documents) in padded batches, for causal and masked LMs: the format of
``data=examples`` (and ``shakespeare_paragraphs``), and the base of prompt -> answer examples.

``LengthGroupedSampler`` puts examples of similar length together so that there is little padding, ``PadCollate``
pads each batch to a multiple of 64 tokens (so that a compiled model sees a handful of lengths), and
``MaskingCollate`` masks tokens afresh for each epoch (BERT's recipe).
"""

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gpt import IGNORE_INDEX, UserError
from gpt.data.module import TokenDataModule
from gpt.data.store import (PreparedData, check_val_fraction, encode_in_order, fit, prepare, prepared_name, processes,
                            token_dtype)
from gpt.data.text import EXAMPLES, describe, iter_examples, read_chunks, text_files
from gpt.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)

Example = tuple[int, torch.Tensor]  # (index in its split, token ids)


class Examples(Dataset):
    """Examples ``start`` to ``stop`` of a prepared directory, each cut to its first ``block_size`` tokens."""

    def __init__(self, prepared: PreparedData, start: int, stop: int, block_size: int):
        offsets = prepared.example_offsets
        self.file, self.first = prepared.example_tokens(), start
        self.starts = offsets[start:stop]
        self.lengths = np.minimum(offsets[start + 1:stop + 1] - self.starts, block_size)

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
    as it is under DDP rather than replacing it with its own.

    ``start_batch``: the batches a resumed run has drawn already (over all epochs, whole batches only, as the
    training loader drops a last smaller one): the epoch they end in starts after them."""

    def __init__(self, lengths: np.ndarray, batch_size: int, shuffle: bool = True, bucketing: bool = True,
                 bucket_batches: int = 50, seed: int = 0, rank: int = 0, num_replicas: int = 1, start_batch: int = 0):
        super().__init__(lengths, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.lengths, self.batch_size = np.asarray(lengths), batch_size
        self.bucketing, self.bucket_batches = bucketing, bucket_batches
        self.resume_epoch, self.skip = divmod(start_batch, max(1, self.num_samples // batch_size))

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
        batches = self.batches()
        if self.epoch == self.resume_epoch:
            batches = batches[self.skip:]
        return iter(np.concatenate(batches).tolist() if batches else [])

    def __len__(self) -> int:
        return self.num_samples


# --------------------------------------------------------------------------- batches: padding and masking


class PadCollate:
    """Right-pads the examples of a batch to the longest one, rounded up to a multiple of ``pad_multiple`` tokens
    (at most ``block_size``), so that a compiled model sees a few lengths, not one per batch. Gives ``input_ids``
    (``pad_id`` in padding), ``attention_mask`` (True at real tokens) and ``labels``: each position's next token,
    -100 after the last real token."""

    def __init__(self, pad_id: int, block_size: int, pad_multiple: int = 64):
        self.pad_id, self.block_size, self.pad_multiple = pad_id, block_size, pad_multiple

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        ids = [tokens for _, tokens in examples]
        longest = max(len(t) for t in ids)
        width = min(-(-longest // self.pad_multiple) * self.pad_multiple, max(self.block_size, longest))
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros(len(ids), width, dtype=torch.bool)
        for row, tokens in enumerate(ids):
            input_ids[row, :len(tokens)], attention_mask[row, :len(tokens)] = tokens, True
        next_is_real = torch.cat([attention_mask[:, 1:], attention_mask.new_zeros(len(ids), 1)], dim=1)
        labels = torch.where(next_is_real, input_ids.roll(-1, dims=1), IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class MaskingCollate(PadCollate):
    """Pads, then masks: ``probability`` of the real tokens that are not special tokens are chosen; of those
    ``mask_fraction`` become ``[MASK]``, ``random_fraction`` a random (non-special) token and the rest stay.
    ``labels`` hold the original ids at the chosen positions and -100 elsewhere.

    The choice is a function of (``seed``, the epoch, the example's index): fresh at every epoch of training, and
    the same at every evaluation when ``epoch`` is None, so that validation masks the same tokens each time. A
    resumed run masks as the run it continues."""

    def __init__(self, pad_id: int, block_size: int, mask_id: int, special_ids: Iterable[int], vocab_size: int,
                 probability: float = 0.15, mask_fraction: float = 0.8, random_fraction: float = 0.1,
                 seed: int = 0, pad_multiple: int = 64, epoch: Callable[[], int] | None = None):
        super().__init__(pad_id, block_size, pad_multiple)
        check_masking(probability, mask_fraction, random_fraction)
        self.mask_id, self.special_ids = mask_id, torch.tensor(sorted(special_ids))
        self.replacements = torch.tensor(sorted(set(range(vocab_size)) - set(special_ids)))
        self.probability, self.mask_fraction, self.random_fraction = probability, mask_fraction, random_fraction
        self.seed, self.epoch = seed, epoch

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
        draws = torch.zeros(*shape, 3)
        epoch = [] if self.epoch is None else [self.epoch()]
        for row, (index, tokens) in enumerate(examples):
            rng = np.random.default_rng([self.seed, *epoch, index])
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
    """Batches of whole examples (lines, paragraphs or documents), padded.

    Causal LM batches by default (each position's label is the next token); with ``mlm_probability`` set, masked-LM
    batches. Examples longer than ``block_size`` tokens are cut to their first ``block_size``.

    - ``text_path``: a UTF-8 text file, or a directory whose ``*.txt`` files are documents;
    - ``example``: ``line``, ``paragraph`` (runs of non-blank lines) or ``document`` (between ``<|endoftext|>``);
    - ``val_fraction``: the share of the examples, at the end, held out for validation;
    - ``bucketing``: batch examples of similar length together; ``bucket_batches``: how many batches are sorted
      by length together;
    - ``pad_multiple``: each batch is padded to a multiple of this many tokens (at most ``block_size``);
    - ``mlm_probability``: the share of tokens masked for a masked LM (null: causal batches); of those,
      ``mlm_mask_fraction`` become ``[MASK]`` and ``mlm_random_fraction`` a random token;
    - and the options of every format (``gpt.data.module.TokenDataModule``)."""

    def __init__(self, *, text_path: str, example: str = "paragraph", val_fraction: float = 0.1,
                 bucketing: bool = True, bucket_batches: int = 50, pad_multiple: int = 64,
                 mlm_probability: float | None = None, mlm_mask_fraction: float = 0.8,
                 mlm_random_fraction: float = 0.1, **options):
        super().__init__(**options)
        if self.block_size is not None and self.block_size < 2:
            raise UserError(f"model.block_size must be at least 2 tokens for whole examples, got {self.block_size}")
        if mlm_probability is not None:
            check_masking(mlm_probability, mlm_mask_fraction, mlm_random_fraction)
        self.text_path, self.example, self.val_fraction = Path(text_path), example, val_fraction
        self.bucketing, self.bucket_batches, self.pad_multiple = bucketing, bucket_batches, pad_multiple
        self.mlm_probability, self.mlm_mask_fraction, self.mlm_random_fraction = \
            mlm_probability, mlm_mask_fraction, mlm_random_fraction

    @property
    def masks_tokens(self) -> bool:
        return self.mlm_probability is not None

    def prepared_name(self) -> str:
        return prepared_name(self.text_path, self.tokenizer_kind, self.vocab_size, self.example)

    def describe_source(self) -> str:
        return str(self.text_path)

    def prepare(self) -> dict:
        return prepare_examples(self.text_path, self.data_dir, self.example, self.tokenizer_kind, self.vocab_size,
                                self.val_fraction, self.num_proc)

    def check(self) -> None:
        tok, data = self.tokenizer, self.prepared
        if self.masks_tokens and tok.mask_id is None:
            raise UserError(f"the {tok.kind} tokenizer has no [MASK] token, which a masked LM needs; "
                            "use data.tokenizer=char or data.tokenizer=bpe")
        self.check_one_batch(data.n_train_examples)
        too_long = int((np.diff(data.example_offsets) > self.block_size).sum())
        log.info("%s: %d train and %d val %ss (%d empty skipped); %d cut to block_size=%d tokens", self.text_path,
                 data.n_train_examples, data.n_examples - data.n_train_examples, self.example,
                 data.meta["skipped_empty"], too_long, self.block_size)

    def check_one_batch(self, examples: int) -> None:
        """Training takes whole batches only: fewer examples than one batch would train nothing."""
        if examples < self.batch_size:
            raise UserError(f"{self.describe_source()} has {examples} training examples per device, fewer than one "
                            f"batch of data.batch_size={self.batch_size}; use data.batch_size={max(1, examples // 2)} "
                            "or less, or more examples")

    def dataset(self, start: int, stop: int) -> Examples:
        return Examples(self.prepared, start, stop, self.block_size)

    def train_dataset(self) -> Examples:
        return self.dataset(0, self.prepared.n_train_examples)

    def val_dataset(self) -> Examples:
        return self.dataset(self.prepared.n_train_examples, self.prepared.n_examples)

    def collate(self, dataset: Examples, sampler: LengthGroupedSampler | None) -> PadCollate:
        """How the examples of ``dataset`` become a batch: masks change with the epoch of a training ``sampler``,
        and are the same at every evaluation without one."""
        tok = self.tokenizer
        pad_id = tok.pad_id if tok.pad_id is not None else 0  # any id: padding is masked out and has no label
        if not self.masks_tokens:
            return PadCollate(pad_id, self.block_size, self.pad_multiple)
        return MaskingCollate(pad_id, self.block_size, tok.mask_id, tok.special_ids, tok.vocab_size,
                              self.mlm_probability, self.mlm_mask_fraction, self.mlm_random_fraction, self.seed,
                              self.pad_multiple, epoch=(lambda: sampler.epoch) if sampler else None)

    def val_example(self) -> dict[str, torch.Tensor]:
        """The first validation example as a batch of one, masked as at every evaluation."""
        dataset = self.val_dataset()
        return self.collate(dataset, None)([dataset[0]])

    def train_dataloader(self) -> DataLoader:
        # whole batches only: a last smaller one would be another shape for a compiled model
        dataset = self.train_dataset()
        sampler = self.sampler(dataset, shuffle=True, start_batch=self.first_batch())
        self.check_one_batch(len(sampler))  # each device's share
        return self.loader(dataset, batch_size=self.batch_size, sampler=sampler,
                           collate_fn=self.collate(dataset, sampler), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        dataset = self.val_dataset()
        return self.loader(dataset, batch_size=self.batch_size, sampler=self.sampler(dataset, shuffle=False),
                           collate_fn=self.collate(dataset, None))

    def sampler(self, dataset: Examples, shuffle: bool, start_batch: int = 0) -> LengthGroupedSampler:
        return LengthGroupedSampler(dataset.lengths, self.batch_size, shuffle, self.bucketing, self.bucket_batches,
                                    self.seed, rank=self.rank, num_replicas=self.world_size, start_batch=start_batch)


def padding_fraction(loader: Iterable[dict[str, torch.Tensor]]) -> float:
    """Padded tokens / all tokens over the batches of ``loader``."""
    padded = total = 0
    for batch in loader:
        padded += int((~batch["attention_mask"]).sum())
        total += batch["attention_mask"].numel()
    return padded / max(total, 1)


# --------------------------------------------------------------------------- the writer: tokens.bin and offsets.npy


def prepare_examples(text_path: str | Path, out_dir: str | Path, example: str = "paragraph", tokenizer: str = "char",
                     vocab_size: int | None = None, val_fraction: float = 0.1, num_proc: int | None = None) -> dict:
    """Tokenize the non-empty examples of a text into ``tokens.bin`` + ``offsets.npy``; the last ``val_fraction``
    of the examples is the validation split."""
    text_path = Path(text_path)
    if example not in EXAMPLES:
        raise UserError(f"data.example={example!r} is not a valid option; choose one of {', '.join(EXAMPLES)}")
    check_val_fraction(val_fraction)
    files = text_files(text_path)
    options = {"example": example, "tokenizer": tokenizer, "vocab_size": vocab_size, "val_fraction": val_fraction}
    return prepare(Path(out_dir), files, options, lambda out: build_examples(
        text_path, files, out, example, tokenizer, val_fraction, vocab_size, num_proc))


def build_examples(text_path: Path, files: list[Path], out_dir: Path, example: str, kind: str,
                    val_fraction: float, vocab_size: int | None, num_proc: int | None) -> tuple[Tokenizer, dict]:
    def examples() -> Iterator[str]:
        return (text for text in iter_examples(files, example) if text.strip())

    n_examples, n_all = 0, 0
    for text in iter_examples(files, example):
        n_all += 1
        n_examples += bool(text.strip())
    n_train = int(n_examples * (1 - val_fraction))
    if n_examples == 0:
        raise UserError(f"{text_path} has no {example}s: all {n_all} were empty; "
                        f"use another text or another data.example ({', '.join(EXAMPLES)})")
    if not 0 < n_train < n_examples:
        raise UserError(f"{text_path} has only {n_examples} {example}(s), too few for a train and a val split; "
                        "use more text, or data.example=line for more examples")
    log.info("preparing %s: %d %ss (%d empty skipped) in %s", describe(text_path, files), n_examples, example,
             n_all - n_examples, out_dir)
    tok = fit(kind, lambda: (text + "\n" for text in itertools.islice(examples(), n_train)),
              lambda: (chunk for path in files for chunk in read_chunks(path)), vocab_size)
    n_chars = sum(p.stat().st_size for p in files)
    pieces = ((None, text, True) for text in examples())  # True: each example ends with the end token
    encoded = encode_in_order(tok, pieces, processes(num_proc, n_chars), batch_size=4096, chunksize=64)
    offsets = PreparedData(out_dir).write_examples((ids for _, ids in encoded), token_dtype(tok.vocab_size))
    return tok, {"examples": n_examples, "train_examples": n_train, "skipped_empty": n_all - n_examples,
                 "tokens": int(offsets[-1])}
