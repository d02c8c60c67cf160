"""A non-spiking SpikeGPT exported with ``to_original`` runs in BlinkDL's ``rwkv`` package (ChatRWKV's runtime, the
reference RWKV-4 inference code) and gives the same logits, token by token and for a whole prompt.

Both sides compute in fp32 from the same fp32 weights; they differ only in the order of operations (the rwkv
package mixes ``x * mu + sx * (1 - mu)``, SpikeGPT ``sx + (x - sx) * mu``; its WKV runs a chunked parallel form
for a prompt), so the logits agree to a few fp32 ulps of their scale times the depth: 1e-4 absolute on logits of
size ~1-10 leaves two orders of magnitude of margin and still fails for any misplaced weight or state field.
"""

from __future__ import annotations

import os

import pytest
import torch
from interop_helpers import random_original_checkpoint

from spikegpt.interop.original import to_original
from spikegpt.interop.rwkv import from_rwkv

ATOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def rwkv_model():
    os.environ.setdefault("RWKV_JIT_ON", "1")  # read when rwkv.model is imported (its README: set before)
    os.environ["RWKV_CUDA_ON"] = "0"
    import rwkv.model

    return rwkv.model


@pytest.fixture(scope="module")
def pair(rwkv_model, tmp_path_factory):
    """(SpikeGPT fp32 non-spiking model, the rwkv package's RWKV on the same weights)."""
    sd = {k: v.float() for k, v in random_original_checkpoint(V=61, C=32, L=3, seed=5).items()}
    ours = from_rwkv(sd, spiking=False)
    path = tmp_path_factory.mktemp("rwkv") / "tiny-rwkv4.pth"
    torch.save(to_original(ours), path)
    theirs = rwkv_model.RWKV(model=str(path).removesuffix(".pth"), strategy="cpu fp32", verbose=False)
    return ours, theirs


def test_rwkv_package_detects_rwkv4(pair):
    _, theirs = pair
    assert theirs.version == 4 and theirs.args.n_layer == 3 and theirs.args.n_embd == 32


def test_logits_match_rwkv_package_token_by_token_and_prompt(pair):
    ours, theirs = pair
    ids = torch.randint(0, 61, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ours(ids).logits[0]  # parallel mode, the whole prompt
        state, step = None, []
        for t in ids[0].tolist():  # the rwkv package one token at a time, carrying its state
            out, state = theirs.forward([t], state)
            step.append(out)
        step = torch.stack(step)
        seq, _ = theirs.forward(ids[0].tolist(), None, full_output=True)  # its sequence mode
    assert ref.abs().max() > 0.5  # logits of some size, not a degenerate model
    torch.testing.assert_close(step, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(seq.float(), ref, atol=ATOL, rtol=0)


def test_state_continuation_matches_rwkv_package(pair):
    """A prompt, then one more token from each side's own carried state."""
    ours, theirs = pair
    ids = torch.randint(0, 61, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = ours(ids[:, :-1], use_cache=True)
        ours_next = ours(ids[:, -1:], state=out.state).logits[0, -1]
        _, state = theirs.forward(ids[0, :-1].tolist(), None)
        theirs_next, _ = theirs.forward([int(ids[0, -1])], state)
    torch.testing.assert_close(theirs_next, ours_next, atol=ATOL, rtol=0)
