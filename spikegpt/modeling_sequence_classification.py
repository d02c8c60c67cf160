"""SpikeGPT with a classification head, for SST-2-style tasks (Hugging Face conventions).

The sequence is read by the SpikeGPT stack; the hidden state (after LNout) at each row's LAST REAL TOKEN
(the rightmost position with ``attention_mask == 1``) goes through ``score = Linear(C -> num_labels)``.
Because padding holds every part of the recurrent state, left and right padding both give each row what it
gives alone. Without ``attention_mask``, positions equal to ``config.pad_token_id`` are treated as padding
(so a pad id that is also a real token, e.g. eos used as pad, masks that token: pass a mask instead);
with neither, no position is padding and the last one is used.

The loss follows ``config.problem_type`` as in transformers: "regression" (MSE, ``num_labels == 1``),
"single_label_classification" (cross-entropy on integer labels), "multi_label_classification" (BCE).

    >>> from spikegpt import SpikeGPTForSequenceClassification
    >>> clf = SpikeGPTForSequenceClassification.from_pretrained("runs/tiny", num_labels=2)  # doctest: +SKIP

Loading a checkpoint of another SpikeGPT class (a causal LM, the base model) initialises ``score`` afresh
(and drops the LM head); any other missing or mis-shaped weight is an error, as for the causal LM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ModelOutput

from spikegpt.configuration_spikegpt import SpikeGPTConfig
from spikegpt.modeling_spikegpt import SpikeGPTModel, SpikeGPTPreTrainedModel, check_model_kwargs
from spikegpt.state import SpikeGPTState

try:  # transformers >= 5: init functions that leave weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    init = nn.init


@dataclass
class SpikeGPTSequenceClassifierOutput(ModelOutput):
    """``loss`` (when labels are given), ``logits`` (B, num_labels), the ``state`` after the last token
    (when ``use_cache``) and ``hidden_states`` (when asked)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    state: SpikeGPTState | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def last_real_token(mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost position with ``mask != 0`` in each row: (B, T) -> (B,) long.
    ``ValueError`` when a row has no real token."""
    m = mask.bool()
    if not bool(m.any(dim=1).all()):
        rows = torch.nonzero(~m.any(dim=1)).flatten().tolist()
        raise ValueError(f"rows {rows} have no real token (all padding): nothing to classify")
    pos = torch.arange(m.shape[1], device=m.device)
    return torch.where(m, pos, -1).max(dim=1).values


class SpikeGPTForSequenceClassification(SpikeGPTPreTrainedModel):
    """SpikeGPT stack + ``score`` head on the last real token's hidden state (see the module docstring)."""

    _keys_to_ignore_on_load_unexpected = [r"^head\.weight$"]

    def __init__(self, config: SpikeGPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = SpikeGPTModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """The base initialisation, with a small ``score`` (std ``initializer_range``) so that fine-tuning
        starts from near-uniform predictions."""
        if module is getattr(self, "score", None):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        else:
            super()._init_weights(module)

    def get_input_embeddings(self):
        return self.model.emb

    def set_input_embeddings(self, value):
        self.model.emb = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        state: SpikeGPTState | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> SpikeGPTSequenceClassifierOutput | tuple:
        """input_ids: (B, T) (or ``inputs_embeds`` (B, T, C)); attention_mask: (B, T), 0 at padding; labels: (B,)
        class ids, (B,) floats for regression or (B, num_labels) for multi-label. Returns ``logits``
        (B, num_labels) and ``loss``; ``state`` and ``hidden_states`` as for the base model."""
        check_model_kwargs(kwargs)
        cfg = self.config
        return_dict = cfg.return_dict if return_dict is None else return_dict
        use_cache = cfg.use_cache if use_cache is None else use_cache
        if attention_mask is None and cfg.pad_token_id is not None and isinstance(input_ids, torch.Tensor):
            attention_mask = (input_ids != cfg.pad_token_id).long()
        rows = self._rows_to_split(input_ids, inputs_embeds, attention_mask, state)
        if rows is not None:
            last_real_token(rows)  # every row must have a real token
            out = self._rowwise(input_ids, inputs_embeds, rows, state, output_hidden_states=output_hidden_states)
            logits = out.logits
        else:
            out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                             state=state, use_cache=True, output_hidden_states=output_hidden_states, return_dict=True)
            h = out.last_hidden_state
            B, T = h.shape[:2]
            last = last_real_token(attention_mask[:, -T:]) if attention_mask is not None else torch.full((B,), T - 1)
            logits = self.score(h[torch.arange(B, device=h.device), last.to(h.device)])
        loss = None if labels is None else self._loss(logits, labels.to(logits.device))
        out = SpikeGPTSequenceClassifierOutput(
            loss=loss, logits=logits, state=out.state if use_cache else None, hidden_states=out.hidden_states
        )
        return out if return_dict else out.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.problem_type is None:
            if self.num_labels == 1:
                cfg.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                cfg.problem_type = "single_label_classification"
            else:
                cfg.problem_type = "multi_label_classification"
        if cfg.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1).float(), labels.reshape(-1).float())
            return F.mse_loss(logits.float(), labels.float())
        if cfg.problem_type == "single_label_classification":
            if labels.shape != logits.shape[:1]:
                want = tuple(logits.shape[:1])
                raise ValueError(f"labels must have shape (batch,) = {want}, got {tuple(labels.shape)}")
            bad = (labels != -100) & ((labels < 0) | (labels >= self.num_labels))
            if bool(bad.any()):
                raise ValueError(
                    f"labels must lie in [0, {self.num_labels}) (or be -100 to ignore), got {labels[bad].tolist()[:8]}"
                )
            return F.cross_entropy(logits.float(), labels.long())
        if cfg.problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        raise ValueError(f"unknown problem_type {cfg.problem_type!r}")
