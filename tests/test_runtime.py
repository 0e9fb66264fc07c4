"""The runtime policy: device and autocast selection, the thread rule, and activation as a context.

No GPU here: the CUDA branches are checked for their refusals and their dtype choice (the CUDA
path itself ran on a lent GPU machine when one was available)."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from medseg.runtime import DeviceError, Runtime, autocast_dtype, default_threads, resolve_device, resolve_runtime


@pytest.fixture
def threads_three():
    """torch at 3 CPU threads for the test (an unusual count: no default sets it), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


def test_resolve_device():
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU").type == "cpu"
    with pytest.raises(DeviceError, match="auto, cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(DeviceError, match="cuda:N"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")
    else:
        with pytest.raises(DeviceError, match="device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_autocast_dtypes():
    assert autocast_dtype("cpu", "none") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert autocast_dtype("cuda", "fp16") is torch.float16
    assert autocast_dtype("cuda", "bf16") is torch.bfloat16
    assert autocast_dtype("cpu", "auto") is None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        autocast_dtype("cpu", "fp16")
    with pytest.raises(ValueError, match="none, bf16, fp16, auto"):
        autocast_dtype("cpu", "int8")


def test_default_threads_rule():
    n = os.cpu_count() or 1
    busy = os.getloadavg()[0] > n
    assert default_threads() == (1 if busy else min(2, n))


def test_resolve_runtime_validates_up_front():
    rt = resolve_runtime("cpu", autocast="auto", threads=None)
    assert rt == Runtime(device=torch.device("cpu"), autocast_mode="none", threads=rt.threads)
    assert rt.threads in (1, 2) and rt.autocast_dtype is None
    assert resolve_runtime("cpu", "bf16", 4).autocast_dtype is torch.bfloat16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_runtime("cpu", "fp16")
    with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
        resolve_runtime("cpu", threads=0)
    with pytest.raises(DeviceError, match="not 'gpu'"):
        resolve_runtime("gpu")
    with pytest.raises(ValueError, match="resolve_runtime turns 'auto'"):
        Runtime(device=torch.device("cpu"), autocast_mode="auto", threads=1)
    with pytest.raises(TypeError, match="torch.device"):
        Runtime(device="cpu", autocast_mode="none", threads=1)


def test_autocast_context_on_and_off():
    a = torch.ones(4, 4)
    with resolve_runtime("cpu", "bf16", 1).autocast():
        assert (a @ a).dtype == torch.bfloat16
    with resolve_runtime("cpu", "none", 1).autocast():
        assert (a @ a).dtype == torch.float32


def test_activate_sets_threads_and_restores_them(threads_three):
    one, two = resolve_runtime("cpu", threads=1), resolve_runtime("cpu", threads=2)
    with one.activate() as active:
        assert active is one and torch.get_num_threads() == 1
        with two.activate():
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    with pytest.raises(KeyError):
        with two.activate():
            raise KeyError("boom")
    assert torch.get_num_threads() == 3
    # another thread's activation leaves this thread's count alone
    seen = []

    def work():
        with one.activate():
            seen.append(torch.get_num_threads())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [1] and torch.get_num_threads() == 3


def test_threads_pinned_by_the_environment(monkeypatch):
    monkeypatch.setenv("MEDSEG_THREADS", "3")
    assert default_threads() == 3 and resolve_runtime("cpu").threads == 3
    assert resolve_runtime("cpu", threads=1).threads == 1  # an explicit count wins
    monkeypatch.setenv("MEDSEG_THREADS", "two")
    with pytest.raises(ValueError, match="MEDSEG_THREADS must be a whole number"):
        default_threads()
