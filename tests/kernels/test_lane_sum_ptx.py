"""The warp reduce-scatter of the scan's backward (``triton._lane_sum_ptx``), run on a small PTX emulator.

The Triton interpreter has no inline assembly, so CI cannot run the kernel path that uses it; this checks the
generated PTX itself: every lane must end with the sum over all 32 lanes of value (lane % k). The GPU tier
checks the kernels that use it against the float64 oracle.
"""

import re

import numpy as np
import pytest

pytest.importorskip("triton")
from dna_mamba.kernels.selective_scan.triton import _lane_sum_ptx  # noqa: E402

LANES = 32


def run_warp(ptx: str, inputs: np.ndarray) -> np.ndarray:
    """Execute the PTX of one inline-asm block on 32 lanes; inputs (32, k) -> the $0 output of each lane."""
    regs = [{f"${i + 1}": inputs[lane, i] for i in range(inputs.shape[1])} for lane in range(LANES)]

    def val(lane: int, operand: str):
        operand = operand.strip()
        if operand in regs[lane]:
            return regs[lane][operand]
        return int(operand, 0)

    for line in ptx.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        args = [a.strip() for a in args.split(",")]
        if op == "shfl.sync.bfly.b32":
            dst, src, mask = args[0], args[1], int(args[2], 0)
            sent = [regs[lane][src] for lane in range(LANES)]
            for lane in range(LANES):
                regs[lane][dst] = sent[lane ^ mask]
            continue
        for lane in range(LANES):
            r = regs[lane]
            if op == "mov.u32" and args[1] == "%laneid":
                r[args[0]] = lane
            elif op == "and.b32":
                r[args[0]] = val(lane, args[1]) & val(lane, args[2])
            elif op == "setp.ne.b32":
                r[args[0]] = val(lane, args[1]) != val(lane, args[2])
            elif op == "selp.f32":
                r[args[0]] = r[args[1]] if r[args[3]] else r[args[2]]
            elif op == "add.rn.f32":
                r[args[0]] = np.float32(r[args[1]]) + np.float32(r[args[2]])
            elif op == "mov.b32":
                r[args[0]] = r[args[1]]
            else:
                raise AssertionError(f"emulator: unknown instruction {line!r}")
    return np.array([regs[lane]["$0"] for lane in range(LANES)], dtype=np.float32)


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16, 32])
def test_every_lane_gets_the_sum_of_its_value(k):
    ptx = _lane_sum_ptx(k)
    rng = np.random.default_rng(k)
    # Integers: sums are exact in any order, so the check is exact.
    inputs = rng.integers(-1000, 1000, size=(LANES, k)).astype(np.float32)
    got = run_warp(ptx, inputs)
    want = inputs.sum(axis=0)[np.arange(LANES) % k]
    np.testing.assert_array_equal(got, want)


def test_shuffle_count_is_k_minus_one_plus_the_remaining_butterflies():
    # The point of the reduce-scatter: 16 values cost 15 + 1 shuffles, where tl.sum would shuffle each 5 times.
    assert len(re.findall(r"shfl\.sync", _lane_sum_ptx(16))) == 16
    assert len(re.findall(r"shfl\.sync", _lane_sum_ptx(32))) == 31
