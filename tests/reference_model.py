"""An independent SpikeGPT forward, written from the published equations with plain loops, for tests only.

It reads a state dict in the ORIGINAL checkpoint layout (``emb.weight``, ``blocks.{l}.att.time_mix_k`` of
shape (1, 1, C), ...), computes in float64, and shares no code with the package: WKV is its
definition (sums of exponentials, no running max), the LIF is the charge / fire / reset loop.
"""

import torch


def to_original_layout(model) -> dict:
    """Our model's weights under the original checkpoint's names and shapes."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.removeprefix("model.")
        if ".time_mix_" in k:
            v = v.reshape(1, 1, -1)
        out[k] = v.detach().clone()
    return out


def _ln(x, sd, name, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def _shift(z):
    return torch.cat([torch.zeros_like(z[:1]), z[:-1]])


def _wkv(w, u, k, v):
    T = k.shape[0]
    y = torch.empty_like(v)
    for t in range(T):
        num = torch.exp(u + k[t]) * v[t]
        den = torch.exp(u + k[t])
        for i in range(t):
            e = torch.exp((t - 1 - i) * w + k[i])
            num = num + e * v[i]
            den = den + e
        y[t] = num / den
    return y


def loop_lif(x, tau, threshold, v_reset):
    """The LIF as a plain loop over the time axis of x (T, C): charge, fire at >=, hard reset."""
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - v_reset)) / tau
        s = (h >= threshold).to(x.dtype)
        v = h * (1 - s) + v_reset * s
        out.append(s)
    return torch.stack(out)


def reference_logits(sd: dict, ids, spiking=True, tau=2.0, threshold=1.0, v_reset=0.0) -> torch.Tensor:
    """Logits (T, V) for one sequence ``ids`` (list of ints), float64, hard reset."""
    sd = {k: v.double() for k, v in sd.items()}
    L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    x = sd["emb.weight"][torch.as_tensor(ids)]
    if spiking:
        x = (x >= 0).double()

    def spike(y):
        return loop_lif(y, tau, threshold, v_reset) if spiking else y

    for l in range(L):
        p = f"blocks.{l}."
        if l == 0:
            x = _ln(x, sd, p + "ln0")
        z = _ln(x, sd, p + "ln1")
        zz = _shift(z)
        mk, mv, mr = (sd[p + f"att.time_mix_{c}"].reshape(-1) for c in "kvr")
        k = (z * mk + zz * (1 - mk)) @ sd[p + "att.key.weight"].T
        v = (z * mv + zz * (1 - mv)) @ sd[p + "att.value.weight"].T
        r = (z * mr + zz * (1 - mr)) @ sd[p + "att.receptance.weight"].T
        w = -torch.exp(sd[p + "att.time_decay"])
        a = (torch.sigmoid(r) * _wkv(w, sd[p + "att.time_first"], k, v)) @ sd[p + "att.output.weight"].T
        x = x + spike(a)
        z = _ln(x, sd, p + "ln2")
        zz = _shift(z)
        mk, mr = (sd[p + f"ffn.time_mix_{c}"].reshape(-1) for c in "kr")
        kk = torch.relu((z * mk + zz * (1 - mk)) @ sd[p + "ffn.key.weight"].T) ** 2
        rr = torch.sigmoid((z * mr + zz * (1 - mr)) @ sd[p + "ffn.receptance.weight"].T)
        x = x + spike(rr * (kk @ sd[p + "ffn.value.weight"].T))
    return _ln(x, sd, "ln_out") @ sd["head.weight"].T

