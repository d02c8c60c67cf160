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

Each field is one (L, B, C) tensor, so reordering beams or selecting rows is one ``index_select``.
The memory is constant in the sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from spikegpt.kernels.wkv_reference import NEG_INF


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
        """The state of a fresh sequence: zeros, and a very negative WKV max."""
        L, C = config.num_hidden_layers, config.hidden_size
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        z = torch.zeros(L, batch_size, C, device=device, dtype=dtype)
        za = torch.zeros(L, batch_size, C, device=device, dtype=acc)
        return cls(
            att_shift=z, ffn_shift=z.clone(), wkv_num=za, wkv_den=za.clone(),
            wkv_max=torch.full_like(za, NEG_INF), att_mem=za.clone(), ffn_mem=za.clone(),
        )

    def tensors(self) -> list[torch.Tensor]:
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
    def stack(cls, layers: list[tuple[torch.Tensor, ...]]) -> SpikeGPTState:
        """Build a state from per-layer tuples in field order (inverse of ``layer``)."""
        return cls(*(torch.stack(ts) for ts in zip(*layers)))

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

    def to(self, device: torch.device | str) -> SpikeGPTState:
        """The same state on ``device`` (dtypes unchanged)."""
        return SpikeGPTState(*(t.to(device) for t in self.tensors()))

    def validate(self, config, batch_size: int) -> None:
        """Raise ``ValueError`` when this state cannot continue a batch of ``batch_size`` for ``config``."""
        want = (config.num_hidden_layers, batch_size, config.hidden_size)
        for f in fields(self):
            t = getattr(self, f.name)
            if tuple(t.shape) != want:
                what = (
                    "batch size" if t.dim() == 3 and t.shape[0] == want[0] and t.shape[2] == want[2]
                    else "model (layers or hidden size)"
                )
                raise ValueError(
                    f"state.{f.name} has shape {tuple(t.shape)} but this call needs (layers, batch, hidden) = "
                    f"{want}: the state comes from a different {what}"
                )
