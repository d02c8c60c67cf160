"""Integration of the Triton kernels: custom-op registration, torch.compile, dispatch without a GPU, and
compilation of the GPU code for sm_90 on a machine without one."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from spikegpt.kernels import lif, wkv
from spikegpt.kernels.lif import triton_recurrent as _lt  # noqa: F401  (registers spikegpt::lif_*)
from spikegpt.kernels.wkv import triton_recurrent as _wt  # noqa: F401  (registers spikegpt::wkv_*)

B, T, C = 2, 5, 3
# CPU through the interpreter by default; benchmarks/gpu_check.sh sets SPIKEGPT_TEST_DEVICE=cuda.
DEVICE = torch.device(os.environ.get("SPIKEGPT_TEST_DEVICE", "cpu"))


def _wkv_args():
    g = torch.Generator().manual_seed(0)
    td, tf = torch.randn(C, generator=g), torch.randn(C, generator=g)
    k, v = torch.randn(B, T, C, generator=g), torch.randn(B, T, C, generator=g)
    a0, b0, p0 = torch.randn(B, C, generator=g), torch.rand(B, C, generator=g) + 0.1, torch.randn(B, C, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    td, tf, k, v, a0, b0, p0, mask = (x.to(DEVICE) for x in (td, tf, k, v, a0, b0, p0, mask))
    return (td, tf, k.requires_grad_(), v.requires_grad_(), a0, b0, p0, mask, 2, 2, True)


def _lif_args(surrogate=0):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(B, T, C, generator=g) * 2).to(DEVICE).requires_grad_()
    mask = (torch.rand(B, T, generator=g) > 0.3).to(DEVICE)
    return (x, torch.zeros(B, C, device=DEVICE), mask, 2.0, 1.0, 0.0, False, False, surrogate, 2.0, True, 2)


def test_opcheck_wkv_ops():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of both WKV ops."""
    torch.library.opcheck(torch.ops.spikegpt.wkv_fwd.default, _wkv_args())
    td, tf, k, v, a0, b0, p0, mask, L, R, _ = _wkv_args()
    y, a, b, p, ckpt = torch.ops.spikegpt.wkv_fwd(td, tf, k, v, a0, b0, p0, mask, L, R, True)
    gy = torch.randn_like(y)
    ga, gb, gp = (torch.randn_like(a) for _ in range(3))
    torch.library.opcheck(
        torch.ops.spikegpt.wkv_bwd.default,
        (td, tf, k.detach(), v.detach(), a0, b0, p0, mask, ckpt.detach(), gy, ga, gb, gp, a.detach(), b.detach(),
         p.detach(), L, R),
    )


def test_opcheck_chunked_wkv_ops():
    """The chunk-parallel WKV's two ops (chunks of 2 tokens: T = 5 gives a ragged last chunk)."""
    from spikegpt.kernels.wkv import triton_chunk  # noqa: F401  (registers spikegpt::wkv_chunked_*)

    td, tf, k, v, a0, b0, p0, mask, *_ = _wkv_args()
    torch.library.opcheck(torch.ops.spikegpt.wkv_chunked_fwd.default, (td, tf, k, v, a0, b0, p0, mask, 2))
    y, a, b, p, ins = torch.ops.spikegpt.wkv_chunked_fwd(td, tf, k, v, a0, b0, p0, mask, 2)
    gy = torch.randn_like(y)
    ga, gb, gp = (torch.randn_like(a) for _ in range(3))
    torch.library.opcheck(
        torch.ops.spikegpt.wkv_chunked_bwd.default,
        (td, tf, k.detach(), v.detach(), a0, b0, p0, mask, ins.detach(), gy, ga, gb, gp, a.detach(), b.detach(),
         p.detach(), 2),
    )


def test_opcheck_lif_ops():
    torch.library.opcheck(torch.ops.spikegpt.lif_fwd.default, _lif_args())
    h = torch.randn(B, T, C, device=DEVICE) + 1
    mask = torch.rand(B, T, device=DEVICE) > 0.3
    gs, gv = torch.randn(B, T, C, device=DEVICE), torch.randn(B, C, device=DEVICE)
    args = (h, gs, gv, mask, 2.0, 1.0, 0.0, False, False, 0, 2.0, 2, torch.float32)
    torch.library.opcheck(torch.ops.spikegpt.lif_bwd.default, args)


def test_torch_compile_full_graph_matches_eager():
    """``torch.compile(fullgraph=True)`` traces both ops (forward and backward) without a graph break."""

    def f(td, tf, k, v, x):
        y, st = wkv(td, tf, k, v, backend="triton")
        s, mem = lif(y * x, backend="triton")
        return (s * x).sum() + y.sum() + st[0].sum() + st[2].sum() + mem.sum()

    g = torch.Generator().manual_seed(2)
    td, tf = torch.randn(4, generator=g), torch.randn(4, generator=g)
    k, v = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    x = torch.randn(2, 6, 4, generator=g) * 3
    td, tf, k, v, x = (t.to(DEVICE) for t in (td, tf, k, v, x))
    grads = []
    for fn in (torch.compile(f, backend="aot_eager", fullgraph=True), f):
        leaves = [t.clone().requires_grad_() for t in (td, tf, k, v, x)]
        out = fn(*leaves)
        out.backward()
        grads.append((out.detach(), *[t.grad for t in leaves]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _run_clean(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter without ``TRITON_INTERPRET`` (as on a user's CPU machine)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_cpu_machine_never_launches_triton():
    """Without a GPU and without the interpreter: the ops and the model run on the PyTorch path and no
    Triton kernel is launched (a launch would fail with '0 active drivers'); backend='triton' is a
    clear ValueError."""
    code = """
    import sys
    import torch
    from triton.runtime.jit import JITFunction

    launched = []

    def refuse(self, *args, **kwargs):
        launched.append(self.fn.__name__)
        raise AssertionError("a Triton kernel was launched")

    JITFunction.run = refuse
    assert not torch.cuda.is_available()
    import spikegpt
    from spikegpt.kernels import lif, wkv

    for dt in (torch.float32, torch.bfloat16, torch.float64):
        k = torch.randn(2, 9, 5, dtype=dt, requires_grad=True)
        y, st = wkv(torch.zeros(5), torch.zeros(5), k, k.detach())
        s, v = lif(y * 4)
        (y.float().sum() + s.float().sum() + st[0].sum()).backward()
    for fn, args in ((wkv, (torch.zeros(5), torch.zeros(5), k, k)), (lif, (k,))):
        try:
            fn(*args, backend="triton")
        except ValueError as e:
            assert "cannot run on cpu" in str(e), e
        else:
            raise AssertionError("backend='triton' on CPU did not raise")

    cfg = spikegpt.SpikeGPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2)
    model = spikegpt.SpikeGPTForCausalLM(cfg)
    ids = torch.randint(0, 50, (2, 12))
    out = model(ids, labels=ids)
    out.loss.backward()
    model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert not launched, launched
    assert not any(m in sys.modules for m in ("spikegpt.kernels.wkv.triton_recurrent",
                                              "spikegpt.kernels.lif.triton_recurrent"))
    print("OK")
    """
    r = _run_clean(code)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr


@pytest.mark.slow
def test_gpu_code_compiles_for_sm90_without_a_gpu():
    """The compiled (non-interpreted) path: every kernel (both WKV designs) lowers to PTX and cubin for an H100/H200
    (sm_90) with runtime loop bounds, which the interpreter never exercises. Small unroll lengths keep
    compile time down; no launch."""
    code = """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from spikegpt.kernels.lif import triton_recurrent as lt
    from spikegpt.kernels.wkv import triton_recurrent as wt

    def build(fn, types, consts):
        sig = {n: ("constexpr" if n in consts else types.get(n, "*fp32")) for n in fn.arg_names}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": 1})
        assert k.asm["cubin"], fn.__name__

    io = {"mask_ptr": "*u8", "T": "i32", "C": "i32"}
    bf = "*bf16"
    for mask in (False, True):
        build(wt._wkv_fwd_kernel, {**io, "k_ptr": bf, "v_ptr": bf, "y_ptr": bf},
              {"NG_STATIC": 0, "L": 2, "R": 2, "BLOCK": 32, "HAS_MASK": mask, "SAVE": True})
        build(wt._wkv_bwd_kernel, {**io, "k_ptr": bf, "v_ptr": bf, "gy_ptr": bf, "gk_ptr": bf, "gv_ptr": bf},
              {"NG_STATIC": 0, "L": 2, "R": 2, "BLOCK": 32, "HAS_MASK": mask})
    scal = {"tau": "fp32", "decay": "fp32", "threshold": "fp32", "v_reset": "fp32", "alpha": "fp32"}
    build(lt._lif_fwd_kernel, {**io, **scal, "x_ptr": bf, "s_ptr": bf},
          {"NCH_STATIC": 0, "L": 2, "BLOCK": 32, "HAS_MASK": True, "SOFT": False, "SAVE_H": True})
    for surrogate in range(5):
        build(lt._lif_bwd_kernel, {**io, **scal, "gs_ptr": bf, "gx_ptr": bf},
              {"NCH_STATIC": 0, "L": 2, "BLOCK": 32, "HAS_MASK": True, "HAS_GS": True, "SOFT": surrogate == 2,
               "DETACH": surrogate == 3, "SURROGATE": surrogate})
    from spikegpt.kernels.wkv import triton_chunk as wc

    for mask in (False, True):
        kv = {**io, "k_ptr": bf, "v_ptr": bf}
        build(wc._chunk_end_kernel, kv, {"L": 4, "BLOCK": 32, "HAS_MASK": mask})
        build(wc._chunk_out_kernel, {**kv, "y_ptr": bf}, {"L": 4, "BLOCK": 32, "HAS_MASK": mask})
        build(wc._chunk_adj_kernel, {**kv, "gy_ptr": bf, "last_ptr": "*i32"}, {"L": 4, "BLOCK": 32, "HAS_MASK": mask})
        build(wc._chunk_grad_kernel, {**kv, "gy_ptr": bf, "gk_ptr": bf, "gv_ptr": bf},
              {"L": 4, "BLOCK": 32, "HAS_MASK": mask})
    build(wc._chunk_scan_kernel, {"N": "i32", "C": "i32"}, {"N_STATIC": 0, "BLOCK": 32})
    build(wc._adj_scan_kernel, {"N": "i32", "C": "i32"}, {"N_STATIC": 0, "BLOCK": 32})
    print("OK")
    """
    r = _run_clean(code)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
