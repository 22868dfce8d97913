"""Variable-length examples (lines, paragraphs or documents of a text) in padded batches, for causal and
masked LMs.

A text is split into examples and tokenized once to disk: ``tokens.bin`` holds the examples end to end (each
followed by ``<|endoftext|>`` when the tokenizer has it) and ``offsets.npy`` where each one starts. Batches
are padded only to their longest example; ``LengthGroupedSampler`` puts examples of similar length together
so that there is little padding, and ``MaskingCollate`` masks tokens afresh for each batch (BERT's recipe).
"""

import itertools
import json
import logging
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gpt import UserError, check_positive
from gpt.bpe import ENDOFTEXT
from gpt.data import (CHUNK_CHARS, atomic_write_text, check_val_fraction, current_meta, describe_source,
                      encode_piece, prepared_dir, read_chunks, start_encoding_worker, text_files, token_dtype)
from gpt.tokenizers import fit_tokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)

EXAMPLES = ("line", "paragraph", "document")
IGNORE_INDEX = -100  # the label of positions without a loss (cross_entropy's default ignore_index)

Example = tuple[int, torch.Tensor]  # (index in its split, token ids)


# --------------------------------------------------------------------------- text -> examples on disk


def iter_examples(files: list[Path], example: str) -> Iterator[str]:
    """Every example of the files in order, empty ones included (the caller skips and counts them).

    line: each line; paragraph: runs of non-blank lines (blank lines separate them); document: the text
    between ``<|endoftext|>`` markers, and each file is at least one document."""
    for path in files:
        if example == "document":
            yield from (document.strip("\n") for document in _documents(read_chunks(path)))
            continue
        lines = (line for chunk in read_chunks(path) for line in chunk.removesuffix("\n").split("\n"))
        yield from lines if example == "line" else _paragraphs(lines)


def _paragraphs(lines: Iterable[str]) -> Iterator[str]:
    paragraph: list[str] = []
    for line in lines:
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def _documents(chunks: Iterable[str]) -> Iterator[str]:
    parts: list[str] = []  # the document read so far (chunks end at line ends, so no marker is cut in two)
    for chunk in chunks:
        *ended, rest = chunk.split(ENDOFTEXT)
        for piece in ended:
            yield "".join(parts) + piece
            parts = []
        parts.append(rest)
    yield "".join(parts)


def prepare_examples(text_path: str | Path, out_dir: str | Path, example: str = "paragraph", tokenizer: str = "char",
                     vocab_size: int | None = None, val_fraction: float = 0.1, num_proc: int | None = None) -> dict:
    """Tokenize the non-empty examples of a text into ``tokens.bin`` + ``offsets.npy`` in ``out_dir``, with
    ``tokenizer.json`` and ``meta.json``; the last ``val_fraction`` of the examples is the validation split.
    Skips the work when ``out_dir`` is up to date."""
    text_path, out_dir = Path(text_path), Path(out_dir)
    if example not in EXAMPLES:
        raise UserError(f"data.example={example!r} is not a valid option; choose one of {', '.join(EXAMPLES)}")
    check_val_fraction(val_fraction)
    files = text_files(text_path)
    source = describe_source(files, example=example, tokenizer=tokenizer, vocab_size=vocab_size,
                             val_fraction=val_fraction)
    if meta := current_meta(out_dir, source):
        return meta

    tok = fit_tokenizer(tokenizer, (chunk for path in files for chunk in read_chunks(path)), vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_proc = min(num_proc or os.cpu_count() or 1, sum(p.stat().st_size for p in files) // CHUNK_CHARS + 1)
    lengths, skipped = _write_examples(iter_examples(files, example), out_dir / "tokens.bin", tok, num_proc)
    n_train = int(len(lengths) * (1 - val_fraction))
    if len(lengths) == 0:
        raise UserError(f"{text_path} has no {example}s: all {skipped} were empty; "
                        f"use another text or another data.example ({', '.join(EXAMPLES)})")
    if not 0 < n_train < len(lengths):
        raise UserError(f"{text_path} has only {len(lengths)} {example}(s), too few for a train and a val split; "
                        "use more text, or data.example=line for more examples")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    with open(out_dir / "offsets.npy.tmp", "wb") as f:
        np.save(f, offsets)
    os.replace(out_dir / "offsets.npy.tmp", out_dir / "offsets.npy")
    atomic_write_text(out_dir / "tokenizer.json", json.dumps(tok.to_dict()))
    meta = {"source": source, "dtype": token_dtype(tok.vocab_size).name, "vocab_size": tok.vocab_size,
            "examples": len(lengths), "train_examples": n_train, "skipped_empty": skipped, "tokens": int(offsets[-1])}
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2))
    return meta


def _write_examples(texts: Iterator[str], path: Path, tok, num_proc: int) -> tuple[np.ndarray, int]:
    """Encode the non-empty examples in parallel, a batch at a time, and append them to ``path`` in order.
    Returns their lengths in tokens and the number of empty (blank) examples skipped."""
    lengths, skipped = [], 0
    dtype = token_dtype(tok.vocab_size)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f, \
            multiprocessing.get_context("fork").Pool(num_proc, start_encoding_worker, (tok.to_dict(),)) as pool:
        while batch := list(itertools.islice(texts, 4096)):
            pieces = [("", text, True) for text in batch if text.strip()]  # True: append the end token
            skipped += len(batch) - len(pieces)
            for _, ids, _ in pool.map(encode_piece, pieces, chunksize=64):
                np.asarray(ids, dtype=dtype).tofile(f)
                lengths.append(len(ids))
    os.replace(tmp, path)
    return np.array(lengths, dtype=np.int64), skipped


class Examples(Dataset):
    """Examples ``start`` to ``stop`` of a prepared directory, each cut to its first ``max_length`` tokens."""

    def __init__(self, data_dir: Path, dtype: str, start: int, stop: int, max_length: int):
        offsets = np.load(data_dir / "offsets.npy")
        self.path, self.dtype = data_dir / "tokens.bin", dtype
        self.starts = offsets[start:stop]
        self.lengths = np.minimum(offsets[start + 1:stop + 1] - self.starts, max_length)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> Example:
        tokens = np.memmap(self.path, dtype=self.dtype, mode="r")  # opened per item: safe across forks
        start = self.starts[i]
        return i, torch.from_numpy(tokens[start:start + self.lengths[i]].astype(np.int64))


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


class PaddedDataModule(L.LightningDataModule):
    """Batches of whole examples (lines, paragraphs or documents) padded to the longest in each batch.

    Causal LM batches by default (labels are the inputs, the LM shifts them); with ``mlm_probability`` set,
    masked-LM batches. Examples longer than ``max_length`` tokens are cut to their first ``max_length``."""

    def __init__(self, text_path: str, cache_dir: str, max_length: int, batch_size: int,
                 example: str = "paragraph", tokenizer: str = "char", vocab_size: int | None = None,
                 val_fraction: float = 0.1, bucketing: bool = True, bucket_batches: int = 50,
                 mlm_probability: float | None = None, mlm_mask_fraction: float = 0.8,
                 mlm_random_fraction: float = 0.1, num_workers: int = 0, seed: int = 1337):
        super().__init__()
        check_positive("data.max_length", max_length)
        if max_length < 2:
            raise UserError(f"data.max_length must be at least 2 tokens, got {max_length}")
        check_positive("data.batch_size", batch_size)
        check_positive("data.bucket_batches", bucket_batches)
        if mlm_probability is not None:
            check_masking(mlm_probability, mlm_mask_fraction, mlm_random_fraction)
        self.text_path, self.example = Path(text_path), example
        self.data_dir = Path(f"{prepared_dir(cache_dir, text_path, tokenizer, vocab_size)}-{example}s")
        self.tokenizer_kind, self.vocab_size, self.val_fraction = tokenizer, vocab_size, val_fraction
        self.max_length, self.batch_size = max_length, batch_size
        self.bucketing, self.bucket_batches = bucketing, bucket_batches
        self.mlm_probability, self.mlm_mask_fraction, self.mlm_random_fraction = \
            mlm_probability, mlm_mask_fraction, mlm_random_fraction
        self.num_workers, self.seed = num_workers, seed
        self.meta: dict | None = None

    @property
    def masks_tokens(self) -> bool:
        """Whether batches are masked-LM batches."""
        return self.mlm_probability is not None

    def prepare_data(self) -> None:
        prepare_examples(self.text_path, self.data_dir, self.example, self.tokenizer_kind, self.vocab_size,
                         self.val_fraction)

    def setup(self, stage: str | None = None) -> None:
        self.meta = json.loads((self.data_dir / "meta.json").read_text())
        tok = self.tokenizer
        if self.masks_tokens and tok.mask_id is None:
            raise UserError(f"the {tok.kind} tokenizer has no [MASK] token, which a masked LM needs; "
                            "use data.tokenizer=char or data.tokenizer=bpe")
        n_train, n = self.meta["train_examples"], self.meta["examples"]
        too_long = int((np.diff(np.load(self.data_dir / "offsets.npy")) > self.max_length).sum())
        log.info("%s: %d train and %d val %ss (%d empty skipped); %d cut to max_length=%d tokens", self.text_path,
                 n_train, n - n_train, self.example, self.meta["skipped_empty"], too_long, self.max_length)

    @property
    def tokenizer(self):
        return tokenizer_from_dict(json.loads((self.data_dir / "tokenizer.json").read_text()))

    def dataset(self, start: int, stop: int) -> Examples:
        return Examples(self.data_dir, self.meta["dtype"], start, stop, self.max_length)

    def collate(self, seed: int | None) -> PadCollate:
        tok = self.tokenizer
        pad_id = tok.pad_id if tok.pad_id is not None else 0  # any id: padding is masked out and has no label
        if not self.masks_tokens:
            return PadCollate(pad_id)
        return MaskingCollate(pad_id, tok.mask_id, tok.special_ids, tok.vocab_size, self.mlm_probability,
                              self.mlm_mask_fraction, self.mlm_random_fraction, seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(0, self.meta["train_examples"]), shuffle=True, masking_seed=None)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(self.meta["train_examples"], self.meta["examples"]), shuffle=False,
                            masking_seed=self.seed)  # the same masks at every evaluation

    def _loader(self, dataset: Examples, shuffle: bool, masking_seed: int | None) -> DataLoader:
        trainer = self.trainer
        sampler = LengthGroupedSampler(dataset.lengths, self.batch_size, shuffle, self.bucketing,
                                       self.bucket_batches, self.seed, rank=trainer.global_rank if trainer else 0,
                                       num_replicas=trainer.world_size if trainer else 1)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=self.collate(masking_seed),
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)


def padding_fraction(loader: Iterable[dict[str, torch.Tensor]]) -> float:
    """Padded tokens / all tokens over the batches of ``loader``."""
    padded = total = 0
    for batch in loader:
        padded += int((~batch["attention_mask"]).sum())
        total += batch["attention_mask"].numel()
    return padded / max(total, 1)
