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


def spike_code(x, gain, spike_inputs, tau=2.0, threshold=1.0, v_reset=0.0):
    """What a spike-coded Linear reads instead of x (T, C): ``vth * c`` with ``vth = |gain| * mean|x|`` per row and
    c the spike counts of ``u = x / vth`` (sign(u) floor(|u| + 1/2) clamped to the code's range), or the LIF loop's
    spikes of ``tau * threshold * u``."""
    vth = abs(float(gain)) * x.abs().mean(-1, keepdim=True)
    u = torch.where(vth > 0, x / vth, 0.0)  # a silent row (all zeros, e.g. relu^2 of negatives) stays silent
    if spike_inputs == "lif":
        return vth * loop_lif(tau * threshold * u, tau, threshold, v_reset)
    K = 1 if spike_inputs in ("binary", "ternary") else int(spike_inputs.removeprefix("int"))
    lo = 0 if spike_inputs == "binary" else -K
    return vth * torch.clamp(torch.sign(u) * torch.floor(u.abs() + 0.5), lo, K)


def reference_logits(sd: dict, ids, spiking=True, tau=2.0, threshold=1.0, v_reset=0.0, spike_inputs="none",
                     ) -> torch.Tensor:
    """Logits (T, V) for one sequence ``ids`` (list of ints), float64, hard reset. With ``spike_inputs`` every
    matrix product reads :func:`spike_code` of its input (gains from ``{site}.codes.{name}.gain`` and
    ``head_code.gain``)."""
    sd = {k: v.double() for k, v in sd.items()}

    def code(x, site):
        return x if spike_inputs == "none" else spike_code(x, sd[site + ".gain"], spike_inputs, tau, threshold,
                                                           v_reset)

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
        k = code(z * mk + zz * (1 - mk), p + "att.codes.key") @ sd[p + "att.key.weight"].T
        v = code(z * mv + zz * (1 - mv), p + "att.codes.value") @ sd[p + "att.value.weight"].T
        r = code(z * mr + zz * (1 - mr), p + "att.codes.receptance") @ sd[p + "att.receptance.weight"].T
        w = -torch.exp(sd[p + "att.time_decay"])
        y = torch.sigmoid(r) * _wkv(w, sd[p + "att.time_first"], k, v)
        a = code(y, p + "att.codes.output") @ sd[p + "att.output.weight"].T
        x = x + spike(a)
        z = _ln(x, sd, p + "ln2")
        zz = _shift(z)
        mk, mr = (sd[p + f"ffn.time_mix_{c}"].reshape(-1) for c in "kr")
        kk = torch.relu(code(z * mk + zz * (1 - mk), p + "ffn.codes.key") @ sd[p + "ffn.key.weight"].T) ** 2
        rr = torch.sigmoid(code(z * mr + zz * (1 - mr), p + "ffn.codes.receptance") @ sd[p + "ffn.receptance.weight"].T)
        x = x + spike(rr * (code(kk, p + "ffn.codes.value") @ sd[p + "ffn.value.weight"].T))
    return code(_ln(x, sd, "ln_out"), "head_code") @ sd["head.weight"].T

