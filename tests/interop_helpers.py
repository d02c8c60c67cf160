"""Shared helpers of the interop tests (converter, CLI, Hub, energy, classification): tiny models and data."""

import torch

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.modeling_spikegpt import LIF


def random_original_checkpoint(V=37, C=24, L=3, F=None, seed=0, dtype=torch.float64) -> dict:
    """Random weights in the ORIGINAL checkpoint layout (written here from the spec, not from the model),
    scaled so that the LIF neurons fire at a moderate rate."""
    g = torch.Generator().manual_seed(seed)
    F = F or 4 * C

    def n(*shape, std):
        return torch.randn(*shape, generator=g, dtype=dtype) * std

    def u(*shape):
        return torch.rand(*shape, generator=g, dtype=dtype)

    sd = {"emb.weight": n(V, C, std=1.0)}
    for l in range(L):
        p = f"blocks.{l}."
        for ln in ("ln0", "ln1", "ln2") if l == 0 else ("ln1", "ln2"):
            sd[p + ln + ".weight"] = 1 + n(C, std=0.1)
            sd[p + ln + ".bias"] = n(C, std=0.1)
        sd[p + "att.time_decay"] = n(C, std=1.0)
        sd[p + "att.time_first"] = n(C, std=0.5)
        for c in "kvr":
            sd[p + f"att.time_mix_{c}"] = u(1, 1, C)
        for name in ("key", "value", "receptance"):
            sd[p + f"att.{name}.weight"] = n(C, C, std=C**-0.5)
        sd[p + "att.output.weight"] = n(C, C, std=4 * C**-0.5)
        for c in "kr":
            sd[p + f"ffn.time_mix_{c}"] = u(1, 1, C)
        sd[p + "ffn.key.weight"] = n(F, C, std=C**-0.5)
        sd[p + "ffn.receptance.weight"] = n(C, C, std=C**-0.5)
        sd[p + "ffn.value.weight"] = n(C, F, std=4 * F**-0.5)
    sd["ln_out.weight"] = 1 + n(C, std=0.1)
    sd["ln_out.bias"] = n(C, std=0.1)
    sd["head.weight"] = n(V, C, std=C**-0.5)
    return sd


def tiny_model(seed=0, dtype=torch.float32, **kw) -> SpikeGPTForCausalLM:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=257, hidden_size=32, num_hidden_layers=2, context_length=64)
    cfg.update(kw)
    return SpikeGPTForCausalLM(SpikeGPTConfig(**cfg)).to(dtype).eval()


def spike_totals(model, ids) -> list[tuple[float, int]]:
    """(spikes, neuron-steps) of every branch LIF over one forward, in module order: the tests' own hooks on
    the ``LIF`` modules, independent of ``spikegpt.recording`` (ids without padding). Fails unless it finds
    the two LIFs of every block (``blocks.{l}.att_lif`` / ``ffn_lif``)."""
    lifs = [(name, m) for name, m in model.named_modules() if isinstance(m, LIF)]
    want = [f"blocks.{l}.{b}_lif" for l in range(model.config.num_hidden_layers) for b in ("att", "ffn")]
    assert [name.removeprefix("model.") for name, _ in lifs] == want, [name for name, _ in lifs]
    out = []
    hooks = [m.register_forward_hook(lambda m, i, o: out.append((float(o[0].sum()), o[0].numel())))
             for _, m in lifs]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return out


def save_byte_tokenizer(path) -> None:
    from spikegpt.train.tokenization import byte_tokenizer

    byte_tokenizer().save_pretrained(path)
