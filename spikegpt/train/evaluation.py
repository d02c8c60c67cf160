"""Loss, perplexity and bits per character over whole documents, with the recurrent state carried.

Documents are laid end to end in ``n_streams`` token streams, each ``[eot] d1 [eot] d2 ...`` (documents are
dealt to the currently shortest stream, longest first, so the streams come out about equally long). A batch
of streams is run through the model in windows of ``window`` tokens; the state returned by one window is
passed to the next (``state=``, ``use_cache=True``), so a document of any length is evaluated exactly as one
long forward pass would, while memory stays that of one window. Every token of a stream except its leading
end-of-text token is a prediction target; the target of a window's last position is the first token of the
next window, so the cross-entropy is computed here from the logits rather than by the model's loss.

Metrics: ``loss`` = nats per predicted token, ``ppl = exp(loss)``, ``bpc = total nats / ln 2 / characters``,
where the characters are those of the documents plus one per end-of-text separator between two documents
of a stream (the separator stands for a document break, like a newline between lines).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class EvalStreams:
    """Token streams to evaluate and the character count they stand for."""

    streams: list[list[int]]
    characters: int
    documents: int


def build_streams(docs: Sequence[tuple[str | int, Sequence[int]]], eot_id: int, n_streams: int) -> EvalStreams:
    """Lay ``(text, token ids)`` documents into at most ``n_streams`` streams ``[eot] d1 [eot] d2 ...``; the
    text may be given as its length in characters (prepared data keeps the count, not the text)."""
    if n_streams < 1:
        raise ValueError(f"n_streams must be >= 1, got {n_streams}")
    order = sorted(range(len(docs)), key=lambda i: (-len(docs[i][1]), i))
    streams: list[list[int]] = [[] for _ in range(min(n_streams, len(docs)))]
    chars = 0
    for i in order:
        text, ids = docs[i]
        s = min(range(len(streams)), key=lambda j: (len(streams[j]), j))
        if streams[s]:
            chars += 1  # the separator between two documents
        streams[s].append(eot_id)
        streams[s].extend(ids)
        chars += text if isinstance(text, int) else len(text)
    return EvalStreams(streams=[s for s in streams if len(s) > 1], characters=chars, documents=len(docs))


@dataclass
class EvalResult:
    nats: float
    tokens: int
    characters: int
    documents: int

    @property
    def loss(self) -> float:
        return self.nats / self.tokens if self.tokens else float("nan")

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 700.0)) if self.tokens else float("nan")

    @property
    def bpc(self) -> float:
        return self.nats / math.log(2) / self.characters if self.characters else float("nan")

    def as_dict(self, prefix: str = "") -> dict[str, float | int]:
        return {
            f"{prefix}loss": self.loss, f"{prefix}ppl": self.ppl, f"{prefix}bpc": self.bpc,
            f"{prefix}tokens": self.tokens, f"{prefix}characters": self.characters,
            f"{prefix}documents": self.documents,
        }


@torch.no_grad()
def stream_nats(
    model: torch.nn.Module,
    streams: Sequence[Sequence[int]],
    window: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    progress=None,
) -> tuple[float, int]:
    """Total next-token cross-entropy (nats, float64) and number of targets over ``streams``.

    ``model`` is a causal LM taking ``input_ids``, ``state`` and ``use_cache`` and returning ``logits``
    (B, T, V) and ``state``. Streams are run ``batch_size`` at a time in windows of ``window`` tokens with the
    state carried; shorter streams of a batch are padded at their end, where nothing is counted.
    ``autocast`` is an optional factory of the context each forward runs in (e.g. ``accelerator.autocast``).
    ``progress`` is an optional tqdm-like object advanced by the number of targets done.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    try:
        for b0 in range(0, len(streams), batch_size):
            group = streams[b0 : b0 + batch_size]
            n = max(len(s) for s in group)
            ids = torch.zeros(len(group), n, dtype=torch.long)
            valid = torch.zeros(len(group), n, dtype=torch.bool)  # valid[b, t]: token t exists
            for b, s in enumerate(group):
                ids[b, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
                valid[b, : len(s)] = True
            ids, valid = ids.to(device), valid.to(device)
            state = None
            for s0 in range(0, n - 1, window):
                s1 = min(s0 + window, n - 1)
                with autocast() if autocast is not None else contextlib.nullcontext():
                    out = model(input_ids=ids[:, s0:s1], state=state, use_cache=True)
                state = out.state
                targets = ids[:, s0 + 1 : s1 + 1]
                keep = valid[:, s0 + 1 : s1 + 1]
                nll = F.cross_entropy(out.logits.float().transpose(1, 2), targets, reduction="none")
                total += nll[keep].double().sum().cpu()
                done = int(keep.sum())
                count += done
                if progress is not None:
                    progress.update(done)
    finally:
        model.train(was_training)
    return float(total), count
