"""The background batch worker: the same batches as the packer, in order, with the state of the last one
consumed (not of the last one made ahead), so a checkpoint resumes exactly."""

import threading

import pytest
import torch
from train_helpers import make_documents, write_jsonl

from spikegpt.train.data import BlockPacker, TextSource
from spikegpt.train.loader import Prefetcher


def _packer(path):
    return BlockPacker(TextSource(str(path)), lambda t: list(t.encode()), 256, 16, seed=3, shuffle_buffer=20)


def test_batches_and_state_are_those_of_the_packer_read_directly(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", make_documents(30))
    direct = _packer(path)
    expected, states = [], []
    for _ in range(8):
        expected.append(direct.next_batch(3))
        states.append(direct.state_dict())
    loader = Prefetcher(_packer(path), 3, depth=4)
    for i in range(5):
        assert torch.equal(loader.next(), expected[i])
    assert loader.state_dict() == states[4]  # the worker has made more, the state is the consumed one's
    resumed = Prefetcher(_packer(path), 3)
    resumed.load_state_dict(loader.state_dict())
    for i in range(5, 8):
        assert torch.equal(resumed.next(), expected[i])
    loader.close()  # batches made ahead are dropped: the next one is still the 6th
    assert torch.equal(loader.next(), expected[5])
    loader.close()
    resumed.close()


class _Failing:
    def __init__(self, fail_at: int):
        self.n, self.fail_at, self.thread = 0, fail_at, None

    def next_batch(self, n):
        self.thread = threading.current_thread()
        self.n += 1
        if self.n == self.fail_at:
            raise FileNotFoundError("shard train-00003.bin vanished")
        return torch.full((n, 4), self.n)

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_the_work_happens_off_the_calling_thread_and_its_errors_reach_the_step():
    packer = _Failing(fail_at=3)
    loader = Prefetcher(packer, 2, depth=2)
    assert loader.next().tolist() == [[1] * 4] * 2 and loader.next()[0, 0] == 2
    assert packer.thread is not threading.current_thread()
    with pytest.raises(FileNotFoundError, match="train-00003.bin vanished"):
        loader.next()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Prefetcher(_Failing(9), 0)
    with pytest.raises(ValueError, match="depth .* must be >= 1"):
        Prefetcher(_Failing(9), 1, depth=0)
