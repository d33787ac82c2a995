"""Device-parametrised tests (``device`` fixture: cpu always, cuda/mps when present) and get_device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from strategies import cases, fewer_examples

import attnlib
from attnlib import device as device_mod

# float32 on the device (MPS has no float64) against float64 on the CPU. GPUs may reorder sums: a bit looser
# than the CPU's own float32 tolerance.
DEVICE_TOL = {"atol": 1e-4, "rtol": 1e-4}


# the device fixture is a read-only torch.device, so sharing it across examples is safe
@settings(fewer_examples, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_sdpa_on_device_equals_cpu_float64(device, case):
    expected, expected_w = attnlib.scaled_dot_product_attention(*case.cast(torch.float64))
    q, k, v, mask = case.cast(torch.float32, device)
    out, w = attnlib.scaled_dot_product_attention(q, k, v, mask)
    assert out.device.type == device.type and w.device.type == device.type
    torch.testing.assert_close(out.cpu().double(), expected, **DEVICE_TOL)
    torch.testing.assert_close(w.cpu().double(), expected_w, **DEVICE_TOL)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **DEVICE_TOL)


def test_masks_are_built_on_the_device(device):
    causal = attnlib.causal_mask(3, 4, alignment="bottom-right", device=device)
    pad = attnlib.padding_mask([1, 4], 4, device=device)
    assert causal.device.type == device.type and pad.device.type == device.type
    torch.testing.assert_close(causal.cpu(), attnlib.causal_mask(3, 4, alignment="bottom-right"))
    combined = attnlib.combine_masks(causal, pad, attnlib.to_additive(causal))
    assert combined.device.type == device.type and combined.shape == (2, 1, 3, 4)
    assert attnlib.padding_mask(torch.tensor([2, 3], device=device)).device.type == device.type


def test_fully_masked_rows_and_gradients_on_device(device):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 3, 4, generator=g) for _ in range(3))
    mask = attnlib.padding_mask([3, 0], 3)
    qd, kd, vd = (x.to(device).requires_grad_() for x in (q, k, v))
    out, w = attnlib.scaled_dot_product_attention(qd, kd, vd, mask.to(device))
    assert (out[1] == 0).all() and (w[1] == 0).all()
    out.square().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (qd, kd, vd))
    expected, _ = attnlib.scaled_dot_product_attention(q.double(), k.double(), v.double(), mask)
    torch.testing.assert_close(out.detach().cpu().double(), expected, **DEVICE_TOL)


@pytest.mark.parametrize("name", ["SelfAttention", "CrossAttention", "MultiHeadAttention"])
def test_modules_on_device_equal_cpu_float64(device, name):
    torch.manual_seed(0)
    layer = {
        "SelfAttention": lambda: attnlib.SelfAttention(4, 3, bias=True),
        "CrossAttention": lambda: attnlib.CrossAttention(4, 4, 3, bias=True),
        "MultiHeadAttention": lambda: attnlib.MultiHeadAttention(4, 2),
    }[name]().double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    mask = attnlib.causal_mask(3)
    inputs = (x,) if name == "SelfAttention" else (x, x)
    expected, expected_w = layer(*inputs, attn_mask=mask)
    on_device = layer.to(device=device, dtype=torch.float32)
    out, w = on_device(*(a.to(device=device, dtype=torch.float32) for a in inputs), attn_mask=mask.to(device))
    assert out.device.type == device.type
    torch.testing.assert_close(out.detach().cpu().double(), expected.detach(), **DEVICE_TOL)
    torch.testing.assert_close(w.detach().cpu().double(), expected_w.detach(), **DEVICE_TOL)


def test_from_torch_keeps_the_device(device):
    theirs = torch.nn.MultiheadAttention(4, 2, batch_first=True, device=device)
    ours = attnlib.MultiHeadAttention.from_torch(theirs)
    assert ours.w_q.weight.device.type == device.type
    assert ours.to_torch().in_proj_weight.device.type == device.type


# ----------------------------------------------------------------------------------------------- get_device


def test_get_device_follows_the_environment_variable(monkeypatch):
    monkeypatch.setenv(device_mod.ENV_VAR, "cpu")
    assert attnlib.get_device() == torch.device("cpu")
    assert attnlib.get_device(prefer="cpu") == torch.device("cpu")
    monkeypatch.setenv(device_mod.ENV_VAR, "  ")  # blank counts as unset
    assert attnlib.get_device(prefer="cpu") == torch.device("cpu")


def test_get_device_default_is_the_best_available(monkeypatch):
    monkeypatch.delenv(device_mod.ENV_VAR, raising=False)
    best = attnlib.available_devices()[0]
    assert attnlib.get_device() == torch.device(best)
    assert attnlib.get_device(prefer="cpu") == torch.device("cpu")
    assert attnlib.available_devices()[-1] == "cpu"


def test_environment_variable_wins_over_prefer(monkeypatch, device):
    monkeypatch.setenv(device_mod.ENV_VAR, device.type)
    assert attnlib.get_device(prefer="cpu").type == device.type
