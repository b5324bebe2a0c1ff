"""`benchmarks/speed.py`: the step profile's matmul FLOPs, counted from input shapes."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from speed import MATMULS, matmul_flops  # noqa: E402


def test_matmul_flops_from_input_shapes_match_the_profilers_own_count():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 8, bias=False))
    x = torch.randn(2, 5, 24)  # a batch of sequences: linear layers flatten it to [10, 24]
    with torch.profiler.profile(record_shapes=True, with_flops=True) as profiler:
        model(x).sum().backward()
    events = [e for e in profiler.key_averages(group_by_input_shape=True) if e.key in MATMULS]
    assert {e.key for e in events} == {"aten::mm", "aten::addmm"}  # the bias layer's forward is an addmm
    assert [matmul_flops(e) for e in events] == [e.flops for e in events]
    # forward 10x24x40 and 10x40x8; backward: input and weight gradients of both but the first input's (no grad)
    forward, backward = 2 * 10 * (24 * 40 + 40 * 8), 2 * 10 * (24 * 40 + 2 * 40 * 8)
    assert sum(matmul_flops(e) for e in events) == forward + backward
