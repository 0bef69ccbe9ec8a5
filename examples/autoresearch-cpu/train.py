"""Byte-level MLP language model in pure numpy: the file the experiment loop edits.

The model reads the last CONTEXT bytes, looks each one up in an embedding table,
concatenates the embeddings, applies one hidden layer and predicts the next byte with a
softmax over 256 values. It trains for exactly TIME_BUDGET seconds of wall time, then is
scored by prepare.evaluate_bpb (bits per byte on held-out text; lower is better).

Everything here may change: hyperparameters, architecture, optimizer, schedule. The
baseline is deliberately mediocre. The last four lines printed are the contract with the
loop: val_bpb, training_seconds, peak_memory_mb, num_steps.
"""

from __future__ import annotations

import math
import resource
import sys
import time

import numpy as np
import prepare

# Hyperparameters: one `NAME = value` per line with no trailing comment, so a search can
# rewrite a line by regex. LEARNING_RATE is the step size of OPTIMIZER ("sgd" or "adam").
# CONTEXT is how many previous bytes the model sees, EMBED_DIM the size of each byte's
# embedding, HIDDEN the width of the hidden layer. WEIGHT_DECAY is decoupled (AdamW-style)
# decay of the weight matrices. WARMDOWN_FRAC is the final fraction of the time budget
# over which the learning rate decays linearly to 0.
LEARNING_RATE = 0.003
OPTIMIZER = "sgd"
CONTEXT = 3
EMBED_DIM = 8
HIDDEN = 64
BATCH_SIZE = 32
WEIGHT_DECAY = 0.0
WARMDOWN_FRAC = 0.0
SEED = 0

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
LOG_EVERY_S = 10.0  # progress line interval (seconds)


def init_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Small random weights scaled by fan-in so tanh starts in its linear range."""

    def normal(*shape: int, scale: float) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    fan_in = CONTEXT * EMBED_DIM
    return {
        "emb": normal(256, EMBED_DIM, scale=1.0),
        "w1": normal(fan_in, HIDDEN, scale=fan_in**-0.5),
        "b1": np.zeros(HIDDEN, dtype=np.float32),
        "w2": normal(HIDDEN, 256, scale=0.1 * HIDDEN**-0.5),  # near-uniform first guesses
        "b2": np.zeros(256, dtype=np.float32),
    }


def forward(
    params: dict[str, np.ndarray], x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (N, 256) for contexts x (N, CONTEXT), plus activations for backward."""
    e = params["emb"][x].reshape(len(x), CONTEXT * EMBED_DIM)
    h = np.tanh(e @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return logits, e, h


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def loss_and_grads(
    params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy (nats) of the next bytes y given contexts x, and its gradients."""
    n = len(x)
    logits, e, h = forward(params, x)
    logp = log_softmax(logits)
    loss = -float(logp[np.arange(n), y].mean())
    # d(loss)/d(logits) = softmax - onehot(y), averaged over the batch.
    dlogits = np.exp(logp)
    dlogits[np.arange(n), y] -= 1.0
    dlogits /= n
    dh = (dlogits @ params["w2"].T) * (1.0 - h * h)  # tanh' = 1 - tanh²
    de = (dh @ params["w1"].T).reshape(n, CONTEXT, EMBED_DIM)
    demb = np.zeros_like(params["emb"])
    np.add.at(demb, x, de)  # a byte can repeat within a batch: accumulate, don't overwrite
    grads = {
        "emb": demb,
        "w1": e.T @ dh,
        "b1": dh.sum(axis=0),
        "w2": h.T @ dlogits,
        "b2": dlogits.sum(axis=0),
    }
    return loss, grads


class Optimizer:
    """Plain SGD or Adam, with decoupled weight decay on the weight matrices."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}  # Adam's moment estimates
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        self.t += 1
        b1, b2 = ADAM_BETAS
        # Adam's bias correction, folded into one scalar step size (cheaper than per array).
        adam_lr = lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for k, g in grads.items():
            p = params[k]
            if WEIGHT_DECAY and k in ("w1", "w2"):
                p *= np.float32(1.0 - lr * WEIGHT_DECAY)
            if OPTIMIZER == "sgd":
                p -= np.float32(lr) * g
            elif OPTIMIZER == "adam":
                m, v = self.m[k], self.v[k]
                m *= b1  # in place: steps are tiny, so allocations are a real cost
                m += (1 - b1) * g
                v *= b2
                v += (1 - b2) * (g * g)
                p -= np.float32(adam_lr) * m / (np.sqrt(v) + ADAM_EPS)
            else:
                raise ValueError(f"unknown OPTIMIZER {OPTIMIZER!r}")


def lr_at(progress: float) -> float:
    """Constant LR, then a linear decay to 0 over the last WARMDOWN_FRAC of the budget."""
    if WARMDOWN_FRAC > 0 and progress > 1 - WARMDOWN_FRAC:
        return LEARNING_RATE * max(0.0, (1 - progress) / WARMDOWN_FRAC)
    return LEARNING_RATE


def peak_memory_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, else KiB


def main() -> None:
    rng = np.random.default_rng(SEED)
    train, val = prepare.load()
    params = init_params(rng)
    opt = Optimizer(params)
    offsets = np.arange(-CONTEXT, 0)

    # Train for exactly TIME_BUDGET seconds of wall time; the schedule follows the clock,
    # not a step count, because steps per second depend on the model and the machine. With
    # a STEP_BUDGET, train exactly that many steps instead, the schedule following them.
    step, smooth_loss, next_log = 0, None, LOG_EVERY_S
    t0 = time.perf_counter()

    def done_fraction(elapsed: float) -> float:
        if prepare.STEP_BUDGET:
            return step / prepare.STEP_BUDGET
        return elapsed / prepare.TIME_BUDGET

    while (fraction := done_fraction(elapsed := time.perf_counter() - t0)) < 1:
        idx = rng.integers(CONTEXT, len(train), size=BATCH_SIZE)
        x, y = train[idx[:, None] + offsets], train[idx]
        loss, grads = loss_and_grads(params, x, y)
        opt.step(params, grads, lr_at(fraction))
        step += 1
        smooth_loss = loss if smooth_loss is None else 0.99 * smooth_loss + 0.01 * loss
        if elapsed >= next_log:
            print(f"step {step:7d} | {elapsed:5.1f}s | train bpb {smooth_loss / np.log(2):.4f}")
            next_log += LOG_EVERY_S
    training_seconds = time.perf_counter() - t0

    val_bpb = prepare.evaluate_bpb(lambda x: log_softmax(forward(params, x)[0]), val, CONTEXT)
    print(f"val_bpb: {val_bpb:.6f}")
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"peak_memory_mb: {peak_memory_mb():.1f}")
    print(f"num_steps: {step}")


if __name__ == "__main__":
    main()
