"""The recurrent state of a SpikeGPT model: everything needed to continue a sequence.

Per layer and batch row, seven vectors of width C:

| field      | what                                                       | dtype            |
|------------|------------------------------------------------------------|------------------|
| att_shift  | last normalised input of TimeMix (token-shift source)      | model dtype      |
| ffn_shift  | last normalised input of ChannelMix                        | model dtype      |
| wkv_num    | WKV numerator, scaled by e^-max                            | fp32 (fp64)      |
| wkv_den    | WKV denominator, scaled by e^-max                          | fp32 (fp64)      |
| wkv_max    | WKV running max                                            | fp32 (fp64)      |
| att_mem    | membrane of the TimeMix branch LIF                         | fp32 (fp64)      |
| ffn_mem    | membrane of the ChannelMix branch LIF                      | fp32 (fp64)      |

Each field is one (L, B, C) tensor, so reordering beams or selecting rows is one ``index_select``; the
accumulating fields are fp64 for an fp64 model and fp32 otherwise. The memory is constant in the sequence
length. The class is a registered pytree node, so ``torch.export`` and ``torch.compile`` take it as an input
and an output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from spikegpt.kernels.wkv.common import NEG_INF

_SHIFT_FIELDS = ("att_shift", "ffn_shift")


def accumulation_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """dtype of the WKV and membrane fields for a model of ``model_dtype``: fp64 for fp64, else fp32."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32


@dataclass
class SpikeGPTState:
    """Recurrent state of all layers; each field is an (L, B, C) tensor (see the module docstring)."""

    att_shift: torch.Tensor
    ffn_shift: torch.Tensor
    wkv_num: torch.Tensor
    wkv_den: torch.Tensor
    wkv_max: torch.Tensor
    att_mem: torch.Tensor
    ffn_mem: torch.Tensor

    @classmethod
    def empty(cls, config, batch_size: int, device=None, dtype: torch.dtype = torch.float32) -> SpikeGPTState:
        """The state of a fresh sequence for ``config`` and ``batch_size`` rows of a ``dtype`` model: zeros,
        and a very negative WKV max."""
        L, C = config.num_hidden_layers, config.hidden_size
        z = torch.zeros(L, batch_size, C, device=device, dtype=dtype)
        za = torch.zeros(L, batch_size, C, device=device, dtype=accumulation_dtype(dtype))
        return cls(
            att_shift=z, ffn_shift=z.clone(), wkv_num=za, wkv_den=za.clone(),
            wkv_max=torch.full_like(za, NEG_INF), att_mem=za.clone(), ffn_mem=za.clone(),
        )

    def tensors(self) -> list[torch.Tensor]:
        """The seven fields, in field order."""
        return [getattr(self, f.name) for f in fields(self)]

    @property
    def batch_size(self) -> int:
        return self.att_shift.shape[1]

    @property
    def num_layers(self) -> int:
        return self.att_shift.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.att_shift.shape[2]

    def layer(self, l: int) -> tuple[torch.Tensor, ...]:
        """The seven (B, C) tensors of layer ``l``, in field order."""
        return tuple(t[l] for t in self.tensors())

    @classmethod
    def stack(cls, layers: Sequence[Sequence[torch.Tensor]]) -> SpikeGPTState:
        """Build a state from per-layer tuples in field order (inverse of ``layer``)."""
        return cls(*(torch.stack(ts) for ts in zip(*layers)))

    @classmethod
    def cat(cls, states: Sequence[SpikeGPTState]) -> SpikeGPTState:
        """The rows of several states, one after another along the batch axis."""
        if not states:
            raise ValueError("SpikeGPTState.cat needs at least one state")
        return cls(*(torch.cat(ts, dim=1) for ts in zip(*(s.tensors() for s in states))))

    def index_select(self, index: torch.Tensor) -> SpikeGPTState:
        """Rows ``index`` of the batch (beam reordering, row selection)."""
        index = index.to(self.att_shift.device)
        return SpikeGPTState(*(t.index_select(1, index) for t in self.tensors()))

    def repeat_interleave(self, repeats: int) -> SpikeGPTState:
        """Each batch row repeated ``repeats`` times (for beams or several samples per prompt)."""
        return SpikeGPTState(*(t.repeat_interleave(repeats, dim=1) for t in self.tensors()))

    def detach(self) -> SpikeGPTState:
        """The same values with no autograd history (truncated BPTT across windows)."""
        return SpikeGPTState(*(t.detach() for t in self.tensors()))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SpikeGPTState:
        """The same state on ``device`` and/or for a model of ``dtype`` (the shift fields take ``dtype``, the
        accumulating fields its accumulation dtype)."""
        acc = None if dtype is None else accumulation_dtype(dtype)
        return SpikeGPTState(*(
            t.to(device=device, dtype=dtype if f.name in _SHIFT_FIELDS else acc)
            for f, t in zip(fields(self), self.tensors())
        ))

    def validate(self, config, batch_size: int, dtype: torch.dtype | None = None, device=None) -> None:
        """Raise ``ValueError`` when this state cannot continue a batch of ``batch_size`` for ``config``
        (and, when given, a model of ``dtype`` on ``device``), naming the field and what it needs."""
        want = (config.num_hidden_layers, batch_size, config.hidden_size)
        for f in fields(self):
            t = getattr(self, f.name)
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"state.{f.name} must be a tensor, got {type(t).__name__}")
            if tuple(t.shape) != want:
                what = (
                    "batch size" if t.dim() == 3 and t.shape[0] == want[0] and t.shape[2] == want[2]
                    else "model (layers or hidden size)"
                )
                raise ValueError(
                    f"state.{f.name} has shape {tuple(t.shape)} but this call needs (layers, batch, hidden) = "
                    f"{want}: the state comes from a different {what}"
                )
            if dtype is not None:
                need = dtype if f.name in _SHIFT_FIELDS else accumulation_dtype(dtype)
                if t.dtype != need:
                    raise ValueError(
                        f"state.{f.name} is {t.dtype} but a {dtype} model needs {need}: convert it with "
                        f"state.to(dtype={dtype})"
                    )
            if device is not None and t.device != torch.device(device):
                raise ValueError(f"state.{f.name} is on {t.device} but the model is on {device}: use state.to(device)")


torch.export.register_dataclass(SpikeGPTState, serialized_type_name=f"{SpikeGPTState.__module__}.SpikeGPTState")
