"""Fixed data preparation and metric for the autoresearch CPU example.

The experiment loop never edits this file: it owns the data and the metric, so every
experiment is scored the same way. Only train.py is edited.

Corpus: the Python standard library's own ``*.py`` files, read from the interpreter that
runs this script (nothing third-party is copied into the project). Files are sorted by
relative path; every 10th file is held out for validation, the rest are for training.

Run ``python3 prepare.py`` once to build and cache the arrays under ``data/``; ``load()``
also builds them on first use.
"""

from __future__ import annotations

import math
import os
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Seconds of training per experiment (wall clock). The loop sets the environment variable;
# tests use a tiny budget.
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "60"))
# Training steps per experiment instead (0: none). The steps a wall-clock budget allows vary
# from run to run on a busy machine; a step budget takes that noise out (the time budget is
# then only the limit past which the loop kills a run, at twice it).
STEP_BUDGET = int(os.environ.get("AUTORESEARCH_STEP_BUDGET", "0"))

TRAIN_BYTES = 3_000_000  # ~3 MB of training text: a 60 s run sees each byte a few times
VAL_BYTES = 300_000  # ~300 KB of held-out text
VAL_EVERY = 10  # every 10th file (by sorted path) goes to validation, never to training
EVAL_POSITIONS = 100_000  # fixed, evenly spaced sample of val positions: eval stays ≤ ~5 s
SKIP_DIRS = {"test", "tests", "idlelib", "site-packages"}  # tests are huge and repetitive

DATA_DIR = Path(__file__).resolve().parent / "data"
# The corpus depends on the interpreter, so the cache is keyed by its version.
_TAG = f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}"
TRAIN_PATH = DATA_DIR / f"{_TAG}-train.npy"
VAL_PATH = DATA_DIR / f"{_TAG}-val.npy"


def _stdlib_files() -> list[tuple[str, Path]]:
    """The stdlib's .py files as (relative posix path, path), sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if SKIP_DIRS.isdisjoint(rel.parts[:-1]):
            files.append((rel.as_posix(), path))
    files.sort()  # posix strings sort the same on every OS: the split is deterministic
    return files


def _concat(paths: list[Path], limit: int) -> np.ndarray:
    """Concatenate file bytes in order until ``limit`` bytes, as a uint8 array."""
    chunks, total = [], 0
    for path in paths:
        if total >= limit:
            break
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
    return np.frombuffer(b"".join(chunks)[:limit], dtype=np.uint8).copy()


def _save(path: Path, array: np.ndarray) -> None:
    """Write atomically, so an interrupted run never leaves a truncated cache behind."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def prepare() -> tuple[np.ndarray, np.ndarray]:
    """Build the train/val byte arrays from the stdlib and cache them under data/."""
    files = _stdlib_files()
    train_files = [p for i, (_, p) in enumerate(files) if i % VAL_EVERY != 0]
    val_files = [p for i, (_, p) in enumerate(files) if i % VAL_EVERY == 0]
    train, val = _concat(train_files, TRAIN_BYTES), _concat(val_files, VAL_BYTES)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    _save(TRAIN_PATH, train)
    _save(VAL_PATH, val)
    return train, val


def load() -> tuple[np.ndarray, np.ndarray]:
    """Return (train_bytes, val_bytes) as uint8 arrays, preparing them if not cached."""
    if TRAIN_PATH.exists() and VAL_PATH.exists():
        return np.load(TRAIN_PATH), np.load(VAL_PATH)
    return prepare()


def eval_positions(val: np.ndarray) -> np.ndarray:
    """The fixed target positions scored by evaluate_bpb (the same for every model)."""
    n = min(EVAL_POSITIONS, len(val))
    return np.linspace(0, len(val) - 1, n).astype(np.int64)


def evaluate_bpb(
    predict_logprobs: Callable[[np.ndarray], np.ndarray],
    val: np.ndarray,
    context: int,
    batch_size: int = 8192,
) -> float:
    """Bits per byte of a model on the fixed validation positions (lower is better).

    ``predict_logprobs(x)`` gets ``x``: uint8 array (N, context) with the ``context`` bytes
    before each target (zero bytes stand in for text before the start of val) and returns
    (N, 256) log-probabilities of the next byte (natural log). The result is the mean of
    -log2 p(true next byte). The outputs are renormalised here, so a model cannot score
    better than its actual probabilities by returning unnormalised values.
    """
    positions = eval_positions(val)
    padded = np.concatenate([np.zeros(context, dtype=np.uint8), val])
    # Row i of `offsets + p` indexes val[p - context : p] in the padded array.
    offsets = np.arange(context, dtype=np.int64)
    total_nats = 0.0
    for start in range(0, len(positions), batch_size):
        pos = positions[start : start + batch_size]
        x = padded[pos[:, None] + offsets]
        logits = np.asarray(predict_logprobs(x), dtype=np.float64)
        if logits.shape != (len(pos), 256) or not np.all(np.isfinite(logits)):
            raise ValueError(f"predict_logprobs must return finite (N, 256), got {logits.shape}")
        # Log-softmax in float64: a stable renormalisation of whatever came back.
        peak = logits.max(axis=1, keepdims=True)
        logz = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
        total_nats += float((logz - logits[np.arange(len(pos)), val[pos]]).sum())
    return total_nats / len(positions) / math.log(2)


if __name__ == "__main__":
    t0 = time.perf_counter()
    cached = TRAIN_PATH.exists() and VAL_PATH.exists()
    train, val = load()
    print(
        f"{'cached' if cached else 'prepared'} {len(train):,} train / {len(val):,} val bytes "
        f"from {sysconfig.get_paths()['stdlib']} in {time.perf_counter() - t0:.1f}s "
        f"-> {DATA_DIR}"
    )
