"""ccf_llm.precision: dtype="auto" follows the CPU features torch reports; explicit dtypes win; bf16 warnings."""

import logging

import pytest
import torch

from ccf_llm import precision
from ccf_llm.precision import device_precision, resolve_dtype

# (AMX tiles, AVX512-BF16, vector ISA torch reports) -> the kind and dtype "auto" must give
CPU_KINDS = {
    "AMX": ((True, True, "AVX512"), torch.bfloat16),
    "AVX512-BF16": ((False, True, "AVX512"), torch.bfloat16),
    "AVX512": ((False, False, "AVX512"), torch.float32),
    "AVX2": ((False, False, "AVX2"), torch.float32),
}


def fake_cpu(monkeypatch, amx, avx512_bf16, capability):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_auto_follows_the_reported_cpu_features(kind, monkeypatch, caplog):
    features, expected = CPU_KINDS[kind]
    fake_cpu(monkeypatch, *features)
    found = device_precision("cpu")
    assert found.kind == kind and found.native_bf16 == (expected == torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="ccf_llm.precision"):
        assert resolve_dtype("auto") == expected
        assert resolve_dtype(None) == expected
    message = caplog.records[0].getMessage()
    assert message.startswith(f"dtype auto -> {str(expected).removeprefix('torch.')}: ")
    assert f"capability {features[2]}" in message  # the log says why


def test_a_torch_without_the_feature_queries_falls_back_to_a_measured_probe(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    speeds = {torch.float32: 135.0, torch.bfloat16: 0.3}  # an AVX2 EPYC, as measured there
    monkeypatch.setattr(precision, "matmul_gflops", lambda dtype, **kw: speeds[dtype])
    found = device_precision("cpu")
    assert not found.native_bf16 and "0.0022x" in found.reason
    speeds[torch.bfloat16] = 400.0  # a Zen 4 EPYC
    assert device_precision("cpu").native_bf16


@pytest.mark.parametrize("kind", CPU_KINDS)
@pytest.mark.parametrize("asked", ["float32", torch.float32, "bfloat16", torch.bfloat16, "float16"])
def test_an_explicit_dtype_always_wins(kind, asked, monkeypatch):
    fake_cpu(monkeypatch, *CPU_KINDS[kind][0])
    monkeypatch.setattr(precision, "matmul_gflops", lambda dtype, **kw: 1.0)
    expected = getattr(torch, asked) if isinstance(asked, str) else asked
    assert resolve_dtype(asked) == expected


def test_explicit_bf16_warns_with_the_measured_slowdown_where_it_is_not_native(monkeypatch, caplog):
    speeds = {torch.float32: 135.0, torch.bfloat16: 0.3}
    monkeypatch.setattr(precision, "matmul_gflops", lambda dtype, **kw: speeds[dtype])
    fake_cpu(monkeypatch, False, False, "AVX2")
    with caplog.at_level(logging.WARNING, logger="ccf_llm.precision"):
        assert resolve_dtype("bfloat16") == torch.bfloat16
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "450x slower than fp32" in record.getMessage()
    assert "neither AMX nor AVX512-BF16 (capability AVX2)" in record.getMessage()
    caplog.clear()
    fake_cpu(monkeypatch, False, True, "AVX512")  # native: no warning
    with caplog.at_level(logging.WARNING, logger="ccf_llm.precision"):
        assert resolve_dtype(torch.bfloat16) == torch.bfloat16
    assert not caplog.records


def test_bad_dtypes_are_refused():
    with pytest.raises(ValueError, match="unknown dtype 'bf16'"):
        resolve_dtype("bf16")
    with pytest.raises(ValueError, match="floating-point"):
        resolve_dtype(torch.int64)


def test_cuda_uses_bf16_where_the_device_supports_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert resolve_dtype("auto", device="cuda") == expected


def test_measured_matmul_speed_is_positive_and_finite():
    speed = precision.matmul_gflops(torch.float32, size=32, seconds=0.01)
    assert 0 < speed < 1e5
