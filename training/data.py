"""Pretraining data: text corpora -> tokenizer -> memory-mapped token streams -> packed fixed-length blocks.

Corpus. `corpus` is a directory (searched recursively, files in sorted path order, hidden entries
skipped) or one file:
- `.txt`: one document per file, read in chunks of lines, so a file may be larger than RAM;
- `.jsonl`: one JSON object per line with the text under `text_field` ("text"), e.g. the shards that
  `bwarea data ...` writes. A record marked `"dirty": true` (a corrupted document) is never used for
  validation. Other files (manifest.json, READMEs) are ignored.

Split. A document is a validation document when a seeded hash of its content falls below
`val_fraction`: deterministic, independent of file order and process count, and duplicates always
land on the same side. With `val_corpus` the whole `corpus` trains and `val_corpus` validates.

Dirty-data mixing. With `dirty.ratio` > 0 that fraction of the training documents (a seeded draw per
document) is corrupted by envs.corruption before tokenization; validation stays clean. This is the
dirty-data experiment's knob (benchmarks/dirty_data.py).

Tokenizer. `tokenizer` names a local Hugging Face tokenizer directory (a model export works); unset,
a byte-level BPE tokenizer of `vocab_size` entries is trained on (at most `tokenizer_train_chars` of)
the training split and cached.

Token cache. Both splits are tokenized once into `<cache_dir>/tokens-<key>/{train,val}.bin` (uint16
for vocabularies of at most 65536 entries, else uint32), every document followed by the EOS token,
streaming document by document so corpora larger than RAM work; `meta.json` records counts and
settings. The key hashes the corpus files (relative paths, sizes, modification times), the tokenizer
and every setting that changes the tokens: an unchanged corpus is reused across runs and processes
(building holds a file lock and renames a finished directory into place), a changed one is rebuilt.
Block settings are not part of the key: blocks are views of the stream.

Blocks. A split's stream is cut into blocks of `block_size` tokens; consecutive blocks share one
token, so every next-token transition of the stream is trained on exactly once per pass.

Order and resume. Training reads blocks in a seeded permutation per pass over the data (a fresh
permutation each pass). Its position is a function of the optimizer step, so a run resumed from a
checkpoint continues with exactly the batches an uninterrupted run would have read. Under DDP rank r
reads the r-th slice of each global batch: the same global batch as one process with world_size
times the batch size. (The Trainer must use `use_distributed_sampler=False`; `bwarea pretrain` sets it.)
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from bwarea.tokenizer import load_tokenizer, train_tokenizer
from common.errors import UserError
from common.files import cache_root, replace_directory
from envs.corpus import DirtyConfig
from envs.corruption import corrupt

CORPUS_SUFFIXES = (".txt", ".jsonl")
CACHE_FORMAT = "bwarea-token-cache-v1"
TEXT_CHUNK_BYTES = 1 << 20       # .txt files are read and tokenized in pieces of about this size
ENCODE_BATCH_CHARS = 1 << 22     # characters handed to the tokenizer per batch
UNIGRAM_MAX_TOKENS = 1 << 28     # training tokens counted for the unigram reference perplexity


class DataError(UserError, ValueError):
    """A corpus, tokenizer or data setting that cannot be used."""


# ----------------------------------------------------------------------------------------------
# Documents

@dataclass(frozen=True)
class Document:
    """One document: in memory (a .jsonl record) or a .txt file read in chunks when needed."""

    key: bytes            # digest of the text: decides the split and the dirty-data draw
    dirty: bool           # marked as corrupted by its corpus
    size: int             # bytes on disk (progress bars)
    text: str | None = None
    path: Path | None = None

    def chunks(self) -> Iterator[str]:
        if self.text is not None:
            yield self.text
            return
        with self.path.open("rb") as handle:
            while True:
                piece = handle.read(TEXT_CHUNK_BYTES)
                if not piece:
                    return
                piece += handle.readline()  # end on a line boundary (also a UTF-8 character boundary)
                try:
                    yield piece.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(f"{self.path} is not UTF-8 text ({error}); convert it or remove it from the corpus.") from None


def corpus_files(path: str | os.PathLike) -> list[Path]:
    """The .txt/.jsonl files of a corpus directory (recursively, sorted) or the corpus file itself."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"corpus {root} does not exist; build one with `bwarea data textworld --out DIR` or point "
                        "data.corpus at a directory of .txt/.jsonl files.")
    if root.is_file():
        files = [root] if root.suffix in CORPUS_SUFFIXES else []
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"corpus {root} holds no .txt or .jsonl files; a corpus is a directory of .txt files (one "
                        "document each) and/or .jsonl files (one {\"text\": ...} object per line).")
    return files


def iter_documents(files: list[Path], text_field: str = "text") -> Iterator[Document]:
    """Every non-empty document of the files, in order; bad records raise DataError naming file and line."""
    for path in files:
        if path.suffix == ".txt":
            digest, size = hashlib.blake2b(digest_size=16), 0
            with path.open("rb") as handle:
                while piece := handle.read(TEXT_CHUNK_BYTES):
                    digest.update(piece)
                    size += len(piece)
            if size:
                yield Document(digest.digest(), dirty=False, size=size, path=path)
            continue
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    raise DataError(f"{path}:{number} is not valid JSON ({error}); every line of a .jsonl corpus file "
                                    "must be one JSON object.") from None
                text = record.get(text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise DataError(f"{path}:{number} has no string field {text_field!r}; set data.text_field to the "
                                    "field that holds the document text.")
                if text:
                    yield Document(hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest(),
                                   dirty=bool(record.get("dirty", False)), size=len(line), text=text)


@dataclass
class DirtyMix(DirtyConfig):
    """Dirty-data mixing: corrupt a share of the training documents (validation stays clean).

    Args:
        ratio: Share of training documents corrupted (a seeded draw per document); 0 keeps the corpus clean.
        corruption: Corruption kinds drawn from per dirty document (envs.corruption): random_tokens,
            shuffled_words, foreign_text.
        rate: Within a dirty document, the probability that each word (random_tokens) or line
            (shuffled_words, foreign_text) is damaged.
        seed: Seed of which documents are corrupted and how.
    """


def _unit(seed: int, purpose: str, key: bytes) -> float:
    """A uniform number in [0, 1) drawn from (seed, purpose, key)."""
    digest = hashlib.blake2b(f"{seed}:{purpose}:".encode() + key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CorpusSpec:
    """Which documents train and validate, and how training documents are dirtied."""

    corpus: str
    val_corpus: str | None = None
    text_field: str = "text"
    val_fraction: float = 0.05
    split_seed: int = 0
    dirty: DirtyConfig = field(default_factory=DirtyMix)

    def files(self) -> dict[str, list[Path]]:
        files = {"train": corpus_files(self.corpus)}
        if self.val_corpus is not None:
            files["val"] = corpus_files(self.val_corpus)
        return files

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides the documents of each split (not the tokens)."""
        listing = {}
        for role, files in self.files().items():
            root = Path(self.corpus if role == "train" else self.val_corpus).expanduser()
            base = root if root.is_dir() else root.parent
            listing[role] = [(p.relative_to(base).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        return {"files": listing, "text_field": self.text_field, "val_fraction": self.val_fraction,
                "split_seed": self.split_seed, "dirty": asdict(self.dirty)}

    def documents(self) -> Iterator[tuple[str, Document]]:
        """(split, document) for every document, "train" or "val"."""
        files = self.files()
        for document in iter_documents(files["train"], self.text_field):
            in_val = self.val_corpus is None and not document.dirty and _unit(self.split_seed, "split", document.key) < self.val_fraction
            yield ("val" if in_val else "train"), document
        for document in iter_documents(files.get("val", []), self.text_field):
            if not document.dirty:
                yield "val", document

    def texts(self, split: str, document: Document) -> Iterator[str]:
        """The document's text in chunks, corrupted if it is a training document drawn for the dirty mix."""
        dirty = self.dirty
        if split != "train" or dirty.ratio <= 0 or _unit(dirty.seed, "dirty", document.key) >= dirty.ratio:
            yield from document.chunks()
            return
        rng = np.random.default_rng([dirty.seed, int.from_bytes(document.key[:8], "big")])
        kind = dirty.corruption[int(rng.integers(len(dirty.corruption)))]
        for chunk in document.chunks():
            yield corrupt(chunk, kind, rng, dirty.rate)


# ----------------------------------------------------------------------------------------------
# Tokenizer and token cache

def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A digest of what decides the token ids (vocabulary, merges, normalisation, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
    else:
        spec = {"vocab": tokenizer.get_vocab()}
    spec["bwarea"] = {"size": len(tokenizer), "eos": tokenizer.eos_token_id}
    return _digest(spec)


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across processes (a second builder waits, then finds the finished cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass
class TokenCache:
    """A finished cache directory: train.bin, val.bin and meta.json."""

    directory: Path
    meta: dict[str, Any]

    @classmethod
    def load(cls, directory: Path) -> "TokenCache":
        return cls(directory, json.loads((directory / "meta.json").read_text()))

    @property
    def key(self) -> str:
        return self.meta["key"]

    def file(self, split: str) -> Path:
        return self.directory / f"{split}.bin"

    def num_tokens(self, split: str) -> int:
        return self.meta["splits"][split]["tokens"]

    def tokens(self, split: str) -> np.ndarray:
        if not self.num_tokens(split):
            return np.zeros(0, dtype=self.meta["dtype"])
        return np.memmap(self.file(split), dtype=self.meta["dtype"], mode="r")


def train_corpus_tokenizer(spec: CorpusSpec, vocab_size: int, max_chars: int, cache_dir: Path) -> Path:
    """Directory of a BPE tokenizer trained on the training split of `spec` (built once, then reused)."""
    key = _digest({"format": CACHE_FORMAT, "corpus": spec.fingerprint(), "vocab_size": vocab_size, "max_chars": max_chars})
    directory = cache_dir / f"tokenizer-{key}"
    with _file_lock(cache_dir / f".tokenizer-{key}.lock"):
        if directory.is_dir():
            return directory
        seen = 0

        def training_text() -> Iterator[str]:
            nonlocal seen
            for split, document in spec.documents():
                if split != "train":
                    continue
                for text in spec.texts(split, document):
                    if seen >= max_chars:
                        return
                    seen += len(text)
                    yield text

        texts = training_text()
        first = next(texts, None)
        if first is None:
            raise DataError(f"corpus {spec.corpus} holds no text in its training split: its documents are all empty.")
        tokenizer = train_tokenizer(itertools.chain([first], texts), vocab_size=vocab_size)
        replace_directory(directory, lambda staging: tokenizer.save_pretrained(str(staging)))
    return directory


def build_token_cache(spec: CorpusSpec, tokenizer: PreTrainedTokenizerBase, cache_dir: Path,
                      progress: bool = True) -> TokenCache:
    """Tokenize both splits into a cache directory (or find the one built before) and return it."""
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no EOS token, which separates documents; use a tokenizer that defines one "
                        "(bwarea's trained tokenizers use <|endoftext|>).")
    vocab_size = len(tokenizer)
    dtype = token_dtype(vocab_size)
    settings = {"format": CACHE_FORMAT, "corpus": spec.fingerprint(), "tokenizer": tokenizer_fingerprint(tokenizer)}
    key = _digest(settings)
    directory = cache_dir / f"tokens-{key}"
    with _file_lock(cache_dir / f".tokens-{key}.lock"):
        if (directory / "meta.json").is_file():
            return TokenCache.load(directory)
        stats = {split: {"tokens": 0, "documents": 0, "dirty_documents": 0} for split in ("train", "val")}
        total_bytes = sum(p.stat().st_size for files in spec.files().values() for p in files)

        def write(staging: Path) -> None:
            handles = {split: (staging / f"{split}.bin").open("wb") for split in stats}
            pending: list[tuple[str, str | None]] = []  # (split, text) pieces; text None = end of document
            pending_chars = 0

            def flush() -> None:
                encoded = iter(_encode(tokenizer, [text for _, text in pending if text is not None]))
                out: dict[str, list[int]] = {split: [] for split in stats}
                for split, text in pending:
                    out[split].extend([tokenizer.eos_token_id] if text is None else next(encoded))
                for split, ids in out.items():
                    np.asarray(ids, dtype=dtype).tofile(handles[split])
                    stats[split]["tokens"] += len(ids)
                pending.clear()

            with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing corpus", disable=not progress) as bar:
                for split, document in spec.documents():
                    for text in spec.texts(split, document):
                        pending.append((split, text))
                        pending_chars += len(text)
                    pending.append((split, None))
                    stats[split]["documents"] += 1
                    stats[split]["dirty_documents"] += int(document.dirty)
                    bar.update(document.size)
                    if pending_chars >= ENCODE_BATCH_CHARS:
                        flush()
                        pending_chars = 0
                flush()
            for handle in handles.values():
                handle.close()
            if not stats["train"]["documents"] + stats["val"]["documents"]:
                raise DataError(f"corpus {spec.corpus} holds no text: its .txt/.jsonl files contain no non-empty document.")
            meta = {"key": key, "dtype": dtype.name, "vocab_size": vocab_size, "eos_token_id": tokenizer.eos_token_id,
                    "splits": stats, "settings": settings}
            (staging / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")

        replace_directory(directory, write)
    return TokenCache.load(directory)


# ----------------------------------------------------------------------------------------------
# Blocks and their order

class PackedBlocks(Dataset):
    """Blocks of `block_size` tokens over a memory-mapped token file; block i starts at i * (block_size - 1).

    The file is opened lazily in each process (data-loader workers, DDP ranks).
    """

    def __init__(self, path: Path, dtype: str, num_tokens: int, block_size: int, limit: int | None = None):
        self.path, self.dtype, self.block_size = path, dtype, block_size
        count = max(0, (num_tokens - 1) // (block_size - 1))
        self.num_blocks = count if limit is None else min(count, limit)
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        start = index * (self.block_size - 1)
        return torch.from_numpy(self._tokens[start:start + self.block_size].astype(np.int64))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None}


class TrainingOrder(Sampler[int]):
    """The block indices one process reads during a run, from micro-batch `start_batch` on.

    The global sequence of blocks is the concatenation of seeded permutations, one per pass over the
    data. Micro-batch b of rank r is positions [(b * world_size + r) * batch_size, ... + batch_size) of it.
    `len()` is the whole run (total_batches * batch_size) even when resuming, matching the progress
    counters Lightning restores; iteration yields only the batches not yet consumed.
    """

    def __init__(self, num_blocks: int, batch_size: int, total_batches: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1, seed: int = 0):
        self.num_blocks, self.batch_size, self.total_batches = num_blocks, batch_size, total_batches
        self.start_batch, self.rank, self.world_size, self.seed = start_batch, rank, world_size, seed
        self._pass: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.total_batches * self.batch_size

    def block_at(self, position: int) -> int:
        data_pass, offset = divmod(position, self.num_blocks)
        if self._pass is None or self._pass[0] != data_pass:
            self._pass = (data_pass, np.random.default_rng([self.seed, data_pass]).permutation(self.num_blocks))
        return int(self._pass[1][offset])

    def __iter__(self) -> Iterator[int]:
        for batch in range(self.start_batch, self.total_batches):
            first = (batch * self.world_size + self.rank) * self.batch_size
            for position in range(first, first + self.batch_size):
                yield self.block_at(position)


# ----------------------------------------------------------------------------------------------
# The Lightning data module

class PretrainData(LightningDataModule):
    """Packed token blocks of a text corpus for pretraining (see the module docstring of training/data.py).

    Args:
        corpus: Directory (searched recursively) or file of .txt documents and/or .jsonl records, e.g. the output
            of `bwarea data textworld --out DIR`.
        val_corpus: Separate validation corpus; when set, all of `corpus` trains and val_fraction is ignored.
        tokenizer: Local Hugging Face tokenizer directory (e.g. a previous run's export/). Unset: train a byte-level
            BPE tokenizer of vocab_size entries on the training split (cached).
        vocab_size: Size of the tokenizer trained when `tokenizer` is unset.
        block_size: Tokens per training sequence (consecutive blocks share one token).
        batch_size: Blocks per batch per process; the global batch is batch_size x processes x accumulate_grad_batches.
        val_fraction: Share of documents (by seeded content hash) held out for validation.
        val_blocks: Validation blocks evaluated at each validation (the first ones, always the same); null: all.
        text_field: Field of a .jsonl record holding the document text.
        split_seed: Seed of the train/validation assignment.
        shuffle_seed: Seed of the block order (one permutation per pass over the data).
        dirty: Dirty-data mixing (the dirty-data experiment): corrupt a share of the training documents.
        cache_dir: Where tokenizers and token caches are kept. Unset: $BWAREA_CACHE_DIR/tokens, else ~/.cache/bwarea/tokens.
        tokenizer_train_chars: At most this many characters of training text are used to train a tokenizer.
        num_workers: Data-loader worker processes (0 reads in the training process, which is enough on CPU).
        progress: Show a progress bar while tokenizing.
    """

    def __init__(self, corpus: str, val_corpus: str | None = None, tokenizer: str | None = None, vocab_size: int = 4096,
                 block_size: int = 256, batch_size: int = 16, val_fraction: float = 0.05, val_blocks: int | None = 256,
                 text_field: str = "text", split_seed: int = 0, shuffle_seed: int = 0, dirty: DirtyMix = DirtyMix(),
                 cache_dir: str | None = None, tokenizer_train_chars: int = 200_000_000, num_workers: int = 0,
                 progress: bool = True):
        super().__init__()
        for name, value, minimum in (("block_size", block_size, 2), ("batch_size", batch_size, 1),
                                     ("vocab_size", vocab_size, 258), ("num_workers", num_workers, 0)):
            if value < minimum:
                raise DataError(f"data.{name} must be at least {minimum}, got {value}.")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}.")
        if val_blocks is not None and val_blocks < 1:
            raise DataError(f"data.val_blocks must be at least 1 (or null for all), got {val_blocks}.")
        self.spec = CorpusSpec(corpus, val_corpus, text_field, val_fraction, split_seed, dirty)
        self.tokenizer_path, self.vocab_size = tokenizer, vocab_size
        self.block_size, self.batch_size, self.val_blocks = block_size, batch_size, val_blocks
        self.shuffle_seed, self.num_workers, self.progress = shuffle_seed, num_workers, progress
        self.tokenizer_train_chars = tokenizer_train_chars
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else cache_root() / "tokens"
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._cache: TokenCache | None = None

    # --- preparation ------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Train the tokenizer if needed and build the token cache (once per machine)."""
        self._prepare()

    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    def _prepare(self) -> None:
        if self._cache is not None:
            return
        if self.tokenizer_path is None:
            path = train_corpus_tokenizer(self.spec, self.vocab_size, self.tokenizer_train_chars, self.cache_dir)
        else:
            path = Path(self.tokenizer_path).expanduser()
        try:
            tokenizer = load_tokenizer(path)
        except (OSError, ValueError) as error:
            raise DataError(f"data.tokenizer {path} cannot be loaded ({error}); point it at a directory holding a "
                            "Hugging Face tokenizer (tokenizer.json), e.g. a run's export/.") from None
        cache = build_token_cache(self.spec, tokenizer, self.cache_dir, self.progress)
        self._check_sizes(cache)
        self._tokenizer, self._cache = tokenizer, cache

    def _check_sizes(self, cache: TokenCache) -> None:
        splits = cache.meta["splits"]
        if cache.num_tokens("train") < self.block_size:
            raise DataError(
                f"the training split of corpus {self.spec.corpus} has {cache.num_tokens('train')} tokens "
                f"({splits['train']['documents']} documents), fewer than one block of data.block_size={self.block_size}; "
                "lower data.block_size or give it more text."
            )
        if cache.num_tokens("val") < self.block_size:
            source = self.spec.val_corpus or self.spec.corpus
            raise DataError(
                f"the validation split of {source} has {cache.num_tokens('val')} tokens ({splits['val']['documents']} "
                f"documents), fewer than one block of data.block_size={self.block_size}; raise data.val_fraction, "
                "give data.val_corpus, or lower data.block_size."
            )

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        self._prepare()
        return self._tokenizer

    @property
    def cache(self) -> TokenCache:
        self._prepare()
        return self._cache

    @property
    def fingerprint(self) -> str:
        """Identifies the token streams (corpus, split, dirty mix and tokenizer)."""
        return self.cache.key

    def blocks(self, split: str) -> PackedBlocks:
        cache = self.cache
        return PackedBlocks(cache.file(split), cache.meta["dtype"], cache.num_tokens(split), self.block_size,
                            limit=self.val_blocks if split == "val" else None)

    def tokens_per_step(self, trainer: Any) -> int:
        """Input tokens per optimizer step over all processes."""
        return self.batch_size * trainer.world_size * trainer.accumulate_grad_batches * self.block_size

    def unigram_perplexity(self) -> float:
        """Perplexity of the validation blocks' targets under the training split's token frequencies
        (add-one smoothed; at most UNIGRAM_MAX_TOKENS training tokens counted): the floor any LM must beat."""
        cache, vocab = self.cache, len(self.tokenizer)
        train = cache.tokens("train")
        counts = np.zeros(vocab, dtype=np.float64)
        for start in range(0, min(len(train), UNIGRAM_MAX_TOKENS), 1 << 24):
            counts += np.bincount(train[start:start + (1 << 24)], minlength=vocab)[:vocab]
        log_probs = np.log((counts + 1) / (counts.sum() + vocab))
        evaluated = len(self.blocks("val"))
        targets = cache.tokens("val")[1: evaluated * (self.block_size - 1) + 1]
        return float(math.exp(-log_probs[targets].mean()))

    # --- loaders ----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is None:
            raise DataError("PretrainData.train_dataloader needs a Trainer (the block order follows its step count).")
        connector = getattr(trainer, "_accelerator_connector", None)
        if getattr(connector, "use_distributed_sampler", False) and trainer.world_size > 1:
            raise DataError("PretrainData shards batches across processes itself; create the Trainer with "
                            "use_distributed_sampler=False (bwarea pretrain does).")
        if trainer.max_steps is None or trainer.max_steps < 1:
            raise DataError("set trainer.max_steps: pretraining runs for a number of optimizer steps, not epochs.")
        accumulate = trainer.accumulate_grad_batches
        blocks = self.blocks("train")
        order = TrainingOrder(len(blocks), self.batch_size, total_batches=trainer.max_steps * accumulate,
                              start_batch=trainer.global_step * accumulate, rank=trainer.global_rank,
                              world_size=trainer.world_size, seed=self.shuffle_seed)
        return self._loader(blocks, order)

    def val_dataloader(self) -> DataLoader:
        blocks = self.blocks("val")
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return self._loader(blocks, list(range(rank, len(blocks), world)))

    def _loader(self, blocks: PackedBlocks, sampler: Any) -> DataLoader:
        return DataLoader(blocks, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0)

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: what the data position (optimizer step x samples per step) depends on."""
        trainer = self.trainer
        return {"fingerprint": self.fingerprint, "block_size": self.block_size, "shuffle_seed": self.shuffle_seed,
                "samples_per_step": self.batch_size * trainer.world_size * trainer.accumulate_grad_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        current = self.state_dict()
        changed = [name for name in current if state.get(name) != current[name]]
        if changed:
            described = ", ".join(f"{name} {state.get(name)!r} -> {current[name]!r}" for name in changed)
            raise DataError(
                f"cannot resume with different data: {described}. The checkpoint's position in the data is only "
                "meaningful for the same corpus, tokenizer, block size, shuffle seed and global batch "
                "(batch_size x processes x accumulate_grad_batches); restore those settings or start a new run."
            )
