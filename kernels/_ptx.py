"""Single PTX instructions the Triton kernels call on a GPU (inline assembly: the interpreter has none of them).

Each is the hardware's approximation with denormals flushed, for the kernels' FAST_MATH paths: one instruction
where the libdevice / IEEE forms take several (tl.exp2 adds 3 to keep denormals, an IEEE division about ten).
"""

import triton
import triton.language as tl


@triton.jit
def ptx_ex2(x):
    """2^x."""
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def ptx_lg2(x):
    """log2(x), absolute error about 2^-22."""
    return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def ptx_rcp(x):
    """1 / x, within 1 ulp."""
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)
