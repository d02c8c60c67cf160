"""The WKV op's PyTorch path against its loop reference, and the reference against the formula."""

import pytest
import torch

from spikegpt.kernels import wkv
from spikegpt.kernels.wkv import torch_chunk
from spikegpt.kernels.wkv.naive import wkv_naive


def make(B, T, C, dtype=torch.float64, kscale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    td = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    tf = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    k = (torch.randn(B, T, C, generator=g, dtype=torch.float64) * kscale).to(dtype)
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64).to(dtype)
    return td, tf, k, v


def random_state(B, C, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, C, generator=g, dtype=dtype),
        torch.rand(B, C, generator=g, dtype=dtype) + 0.1,
        torch.randn(B, C, generator=g, dtype=dtype),
    )


def direct_formula(td, tf, k, v):
    """WKV straight from its definition (no max trick): for small inputs in float64."""
    B, T, C = k.shape
    w, u = -torch.exp(td), tf
    y = torch.empty_like(v)
    for t in range(T):
        num = torch.exp(u + k[:, t]) * v[:, t]
        den = torch.exp(u + k[:, t])
        for i in range(t):
            e = torch.exp((t - 1 - i) * w + k[:, i])
            num, den = num + e * v[:, i], den + e
        y[:, t] = num / den
    return y


def test_reference_matches_definition():
    td, tf, k, v = make(2, 9, 5)
    y, _ = wkv_naive(td, tf, k, v)
    torch.testing.assert_close(y, direct_formula(td, tf, k, v), rtol=1e-12, atol=1e-12)


def test_reference_gradcheck():
    td, tf, k, v = make(1, 4, 3)
    st = random_state(1, 3)
    args = [t.clone().requires_grad_() for t in (td, tf, k, v, *st)]

    def f(td, tf, k, v, a, b, p):
        y, (a2, b2, p2) = wkv_naive(td, tf, k, v, (a, b, p))
        return y, a2, b2, p2

    assert torch.autograd.gradcheck(f, args)


CASES = [(2, 1, 5), (2, 7, 3), (3, 37, 6), (1, 70, 17), (2, 16, 8)]


def _ids(c):
    return f"B{c[0]}-T{c[1]}-C{c[2]}"


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "state"])
@pytest.mark.parametrize("shape", CASES, ids=_ids)
def test_fast_path_matches_reference_fp64(shape, with_state, masked):
    B, T, C = shape
    td, tf, k, v = make(B, T, C, kscale=3.0)
    st = random_state(B, C) if with_state else None
    mask = (torch.rand(B, T, generator=torch.Generator().manual_seed(5)) > 0.3) if masked else None
    leaves = [t.clone().requires_grad_() for t in (td, tf, k, v)]
    st_leaves = [s.clone().requires_grad_() for s in st] if st else None
    y, s = wkv(*leaves, st_leaves, mask=mask, backend="torch")
    ref_leaves = [t.clone().requires_grad_() for t in (td, tf, k, v)]
    ref_st = [s.clone().requires_grad_() for s in st] if st else None
    yr, sr = wkv_naive(*ref_leaves, ref_st, mask=mask)
    torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-10)
    for a, b in zip(s, sr):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    g = torch.Generator().manual_seed(9)
    cots = [torch.randn(y.shape, generator=g, dtype=y.dtype)] + [
        torch.randn(t.shape, generator=g, dtype=t.dtype) for t in s
    ]
    loss = sum((a * c).sum() for a, c in zip((y, *s), cots))
    loss_r = sum((a * c).sum() for a, c in zip((yr, *sr), cots))
    loss.backward()
    loss_r.backward()
    for name, a, b in zip(["time_decay", "time_first", "k", "v"], leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9, msg=f"grad {name}")
    if st:
        for a, b in zip(st_leaves, ref_st):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9, msg="grad of the incoming state")


@pytest.mark.parametrize("T", [1, 5, 33, 100])
def test_chunked_equals_whole(T):
    td, tf, k, v = make(2, T + 40, 7)
    y, s = wkv(td, tf, k, v)
    y1, s1 = wkv(td, tf, k[:, :T], v[:, :T])
    y2, s2 = wkv(td, tf, k[:, T:], v[:, T:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-12, atol=1e-12)
    for a, b in zip(s2, s):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_token_by_token_equals_whole():
    td, tf, k, v = make(2, 40, 5)
    y, s = wkv(td, tf, k, v)
    st, ys = None, []
    for t in range(40):
        yt, st = wkv(td, tf, k[:, t : t + 1], v[:, t : t + 1], st)
        ys.append(yt)
    torch.testing.assert_close(torch.cat(ys, 1), y, rtol=1e-12, atol=1e-12)


def test_extreme_keys_fp32_no_overflow():
    """|k| up to 60 and strong decays in fp32 stay finite and match a float64 reference."""
    td, tf, k, v = make(2, 50, 6, kscale=1.0)
    k = (torch.rand(k.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1) * 60
    td = torch.linspace(-6, 5, 6, dtype=torch.float64)  # decays from ~e^-0.0025 to e^-148 per token
    y32, s32 = wkv(td.float(), tf.float(), k.float(), v.float())
    y64, _ = wkv_naive(td, tf, k, v)
    assert torch.isfinite(y32).all() and all(torch.isfinite(s).all() for s in s32)
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    td, tf, k, v = make(2, 45, 12, kscale=2.0)
    y, s = wkv(td.to(dtype), tf.to(dtype), k.to(dtype), v.to(dtype))
    assert y.dtype == dtype and s[0].dtype == torch.float32
    yr, _ = wkv_naive(td.to(dtype).double(), tf.to(dtype).double(), k.to(dtype).double(), v.to(dtype).double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.double(), yr, rtol=tol, atol=tol)


def test_mask_holds_state_and_equals_compacted_sequence():
    """Real tokens with padding anywhere give what the sequence without the padding gives."""
    td, tf, k, v = make(1, 30, 4)
    st = random_state(1, 4)
    mask = torch.rand(1, 30, generator=torch.Generator().manual_seed(11)) > 0.4
    y, s = wkv(td, tf, k, v, st, mask=mask)
    idx = mask[0].nonzero()[:, 0]
    yc, sc = wkv(td, tf, k[:, idx], v[:, idx], st)
    torch.testing.assert_close(y[:, idx], yc, rtol=1e-12, atol=1e-12)
    assert (y[:, ~mask[0]] == 0).all()
    for a, b in zip(s, sc):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bad_inputs_raise():
    td, tf, k, v = make(2, 5, 4)
    with pytest.raises(ValueError, match="time_decay"):
        wkv(td[:3], tf, k, v)
    with pytest.raises(ValueError, match="k and v"):
        wkv(td, tf, k, v[:, :4])
    with pytest.raises(ValueError, match="state"):
        wkv(td, tf, k, v, (torch.zeros(3, 4),) * 3)
    with pytest.raises(ValueError, match="backend"):
        wkv(td, tf, k, v, backend="cuda")
    with pytest.raises(ValueError, match="mask"):
        wkv(td, tf, k, v, mask=torch.ones(2, 6))


def _grads_vs_reference(fn, td, tf, k, v, st, mask, seed=9):
    """Outputs and gradients (of every input and of the incoming state) of ``fn`` and of the reference,
    under random cotangents on y and on all three parts of the returned state."""
    results = []
    for f in (fn, wkv_naive):
        leaves = [t.clone().requires_grad_() for t in (td, tf, k, v)]
        st_leaves = [s.clone().requires_grad_() for s in st] if st else None
        y, s = f(*leaves, st_leaves, mask=mask)
        g = torch.Generator().manual_seed(seed)
        outs = (y, *s)
        loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
        loss.backward()
        results.append(([o.detach() for o in outs], [x.grad for x in leaves + (st_leaves or [])]))
    return results


@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_backward_any_chunk_length_matches_reference(chunk):
    """The hand-written backward (three passes, like the forward) for any chunk length, ragged ends,
    padding, and an incoming state; the returned max's gradient follows its argmax path."""
    td, tf, k, v = make(2, 23, 5, kscale=3.0)
    st = random_state(2, 5)
    mask = torch.rand(2, 23, generator=torch.Generator().manual_seed(3)) > 0.3
    (o1, g1), (o2, g2) = _grads_vs_reference(
        lambda *a, mask: wkv(*a, mask=mask, backend="torch", chunk_size=chunk), td, tf, k, v, st, mask)
    for a, b in zip(o1 + g1, o2 + g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_backward_all_padding_row_and_incoming_max_wins():
    """A row that is all padding passes every gradient straight to the incoming state; a large incoming
    max that no key overtakes takes the returned max's gradient (and w's, once per real token)."""
    td, tf, k, v = make(2, 9, 4)
    a0, b0, p0 = random_state(2, 4)
    p0 = p0 + torch.tensor([[40.0], [0.0]], dtype=torch.float64)  # row 0: no key reaches the incoming max
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1] = False
    (o1, g1), (o2, g2) = _grads_vs_reference(
        lambda *a, mask: wkv(*a, mask=mask, backend="torch"), td, tf, k, v, (a0, b0, p0), mask)
    for a, b in zip(o1 + g1, o2 + g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert (g1[2][1] == 0).all() and (g1[3][1] == 0).all()  # nothing reaches padded k, v


def test_extreme_keys_fp32_gradients_finite_and_close():
    """|k| up to 60 with decays down to e^-148 per token: fp32 gradients stay finite and match float64."""
    g = torch.Generator().manual_seed(2)
    k = (torch.rand(2, 50, 6, generator=g, dtype=torch.float64) * 2 - 1) * 60
    v = torch.randn(2, 50, 6, generator=g, dtype=torch.float64)
    td = torch.linspace(-6, 5, 6, dtype=torch.float64)
    tf = torch.randn(6, generator=g, dtype=torch.float64)
    (o32, g32), _ = _grads_vs_reference(lambda *a, mask: wkv(*a, mask=mask), td.float(), tf.float(), k.float(),
                                        v.float(), None, None)
    (_, _), (o64, g64) = _grads_vs_reference(lambda *a, mask: wkv(*a, mask=mask), td, tf, k, v, None, None)
    for a, b in zip(o32 + g32, o64 + g64):
        assert torch.isfinite(a).all()
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3 * scale)


# ---- batch invariance: fixed chunk lengths, counted in real tokens (the padded batch is compacted) ----

LENGTHS = (5, 70, 200, 0)  # below and well above the chunk length, and a row that is all padding
PADDED_T = 231  # every row is padded, and left padding is not a whole number of chunks


def padded_batch(layout, lengths=LENGTHS, T=PADDED_T, C=5, seed=0):
    """fp32 inputs (B, T, C), a random incoming state and a mask that puts row b's ``lengths[b]`` real tokens
    at the end (``left``), at the start (``right``) or at random positions (``holes``)."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    td, tf = torch.randn(C, generator=g), torch.randn(C, generator=g)
    k, v = torch.randn(B, T, C, generator=g) * 3, torch.randn(B, T, C, generator=g)
    st = (torch.randn(B, C, generator=g), torch.rand(B, C, generator=g) + 0.1, torch.randn(B, C, generator=g))
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if layout == "left":
            mask[b, T - n:] = True
        elif layout == "right":
            mask[b, :n] = True
        else:
            mask[b, torch.randperm(T, generator=g)[:n]] = True
    return (td, tf, k, v), st, mask


def alone(inputs, st, mask, b, chunk_size=None):
    """Row b's real tokens run on their own: B = 1, no mask."""
    td, tf, k, v = inputs
    idx = mask[b].nonzero()[:, 0]
    row_st = None if st is None else tuple(s[b : b + 1] for s in st)
    return wkv(td, tf, k[b : b + 1, idx], v[b : b + 1, idx], row_st, backend="torch", chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [None, 7], ids=["default-chunk", "chunk7"])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "state"])
@pytest.mark.parametrize("layout", ["left", "right", "holes"])
def test_batch_invariance_outputs_bit_identical(layout, with_state, chunk_size):
    """In fp32 on CPU, a row's outputs and final state are bit for bit those of the row run alone (B = 1, no
    mask), whatever its padding (left, right, holes) and the lengths of the other rows.

    Guards against the discrepancy that fixed-length chunks over the compacted batch remove. The chunk length
    used to be about sqrt(T) of the padded T, fixed at import, and chunk boundaries sat at padded positions.
    So padding moved where a row's real tokens were cut into chunks, and a left-padded prompt (batched
    generation) differed in the last bits from the same prompt alone, and with the longest row of the batch.
    """
    inputs, st, mask = padded_batch(layout)
    st = st if with_state else None
    y, s = wkv(*inputs, st, mask=mask, backend="torch", chunk_size=chunk_size)
    assert (y[~mask] == 0).all()
    for b, n in enumerate(LENGTHS):
        if n == 0:  # all padding: the state passes through untouched (the empty state when none came in)
            want = tuple(x[b] for x in st) if st else (torch.zeros(5), torch.zeros(5), torch.full((5,), -1e38))
            assert all(torch.equal(a[b], w) for a, w in zip(s, want)), f"row {b}"
            continue
        y1, s1 = alone(inputs, st, mask, b, chunk_size)
        assert torch.equal(y[b : b + 1, mask[b]], y1), f"row {b} (length {n}): y"
        for name, a, a1 in zip(("num", "den", "max"), s, s1):
            assert torch.equal(a[b : b + 1], a1), f"row {b} (length {n}): {name}"


def test_batch_invariance_needs_the_compaction(monkeypatch):
    """The check above has teeth: with the compaction switched off (chunk boundaries at padded positions,
    the old behaviour), a left-padded row no longer matches itself alone bit for bit, though it stays
    close."""
    inputs, st, mask = padded_batch("left")
    ramp = torch.arange(PADDED_T).expand(mask.shape)
    monkeypatch.setattr(torch_chunk, "_compact", lambda m: (ramp, ramp))
    y, _ = wkv(*inputs, st, mask=mask, backend="torch")
    y1, _ = alone(inputs, st, mask, 1)  # the row of 70 real tokens, 161 padded ones before them
    assert not torch.equal(y[1:2, mask[1]], y1)
    torch.testing.assert_close(y[1:2, mask[1]], y1, rtol=1e-5, atol=1e-5)


def _backward(fn, inputs, st, mask, cots, dtype):
    """Gradients of (time_decay, time_first, k, v, *incoming state) under the cotangents ``cots`` on (y, *state)."""
    leaves = [x.detach().to(dtype).requires_grad_() for x in (*inputs, *st)]
    y, s = fn(*leaves[:4], tuple(leaves[4:]), mask=mask)
    sum((o.double() * c).sum() for o, c in zip((y, *s), cots)).backward()
    return [x.grad.double() for x in leaves]


@pytest.mark.parametrize("layout", ["left", "right", "holes"])
def test_batch_invariance_gradients_close(layout):
    """Gradients through a padded fp32 batch match the float64 reference on that batch, and each row's k, v and
    incoming-state gradients match the row run alone under the same cotangents. Close, not bit-identical:
    bit identity is claimed for outputs only (the time_decay and time_first gradients sum over the batch)."""
    inputs, st, mask = padded_batch(layout)
    B, T, C = inputs[2].shape
    g = torch.Generator().manual_seed(9)
    cots = [torch.randn(B, T, C, generator=g, dtype=torch.float64)] + [
        torch.randn(B, C, generator=g, dtype=torch.float64) for _ in range(3)
    ]

    def torch_path(*a, mask):
        return wkv(*a, mask=mask, backend="torch")

    got = _backward(torch_path, inputs, st, mask, cots, torch.float32)
    want = _backward(wkv_naive, inputs, st, mask, cots, torch.float64)
    for name, a, b in zip(("time_decay", "time_first", "k", "v", "num", "den", "max"), got, want):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale, msg=lambda m, name=name: f"grad {name}: {m}")
    gk, gv, *gst = got[2:]
    for b, n in enumerate(LENGTHS):
        if n == 0:  # all padding: nothing reaches k and v
            assert (gk[b] == 0).all() and (gv[b] == 0).all()
            continue
        td, tf, k, v = inputs
        idx = mask[b].nonzero()[:, 0]
        row = (td, tf, k[b : b + 1, idx], v[b : b + 1, idx])
        row_cots = [cots[0][b : b + 1, idx]] + [c[b : b + 1] for c in cots[1:]]
        one = _backward(torch_path, row, tuple(x[b : b + 1] for x in st), None, row_cots, torch.float32)
        mine = (gk[b, idx], gv[b, idx], *(x[b] for x in gst))
        for name, a, a1 in zip(("k", "v", "num", "den", "max"), mine, one[2:]):
            msg = f"row {b} (length {n}), grad {name}"
            torch.testing.assert_close(a, a1[0], rtol=1e-5, atol=1e-5, msg=lambda m, msg=msg: f"{msg}: {m}")


def test_chunk_size_moves_only_the_last_bits(monkeypatch):
    """Two chunk lengths give different last bits on a long fp32 sequence, both match the float64 reference,
    and ``torch_chunk.CHUNK_SIZE``, changed after import, sets the chunking of the next call unless
    ``chunk_size=`` overrides it."""
    td, tf, k, v = (x.float() for x in make(2, 300, 6, kscale=3.0))
    yr, sr = wkv_naive(td.double(), tf.double(), k.double(), v.double())

    def run(**kw):
        return wkv(td, tf, k, v, backend="torch", **kw)

    y32, s32 = run(chunk_size=32)
    y7, s7 = run(chunk_size=7)
    assert not torch.equal(y32, y7)
    for y, s in ((y32, s32), (y7, s7)):
        torch.testing.assert_close(y.double(), yr, rtol=1e-5, atol=1e-5)
        for a, b in zip(s, sr):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(torch_chunk, "CHUNK_SIZE", 7)
    y, s = run()
    assert torch.equal(y, y7) and all(torch.equal(a, b) for a, b in zip(s, s7))
    y, s = run(chunk_size=32)  # the argument wins over the module setting
    assert torch.equal(y, y32) and all(torch.equal(a, b) for a, b in zip(s, s32))
