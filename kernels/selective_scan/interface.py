"""Public selective scan (Mamba-1): argument checks, backend dispatch, and the Triton autograd Function."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

try:
    import triton
except ImportError:  # Triton ships Linux wheels only; the reference path needs none of it
    triton = None

from dna_mamba.kernels._launch import LAUNCH_OPTIONS, cuda_sm_count, device_guard, new_buffer
from dna_mamba.kernels.layout import relayout
from dna_mamba.kernels.selective_scan.reference import selective_scan_ref

logger = logging.getLogger(__name__)

MAX_DSTATE = 64
# Tests set this to allocate every output and work buffer NaN-filled, so an element no kernel writes shows.
POISON_OUTPUTS = False
_FLOAT_IO = (torch.float32, torch.float16, torch.bfloat16)
_BACKENDS = ("auto", "triton", "reference")
_warned_fallback = False


def _shape(t: torch.Tensor | None) -> str:
    return "None" if t is None else f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


def _check_args(u, delta, A, B, C, D, z, delta_bias, initial_state, backend) -> None:
    """Raise ValueError naming the argument and the shapes, before anything is launched."""

    def fail(msg: str) -> None:
        raise ValueError(f"selective_scan: {msg}")

    if backend not in _BACKENDS:
        fail(f"backend must be one of {_BACKENDS}, got {backend!r}")
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            fail(f"{name} must be a tensor, got {type(t).__name__}")
    if u.dim() != 3:
        fail(f"u must be (batch, dim, L), got {_shape(u)}")
    batch, dim, seqlen = u.shape
    if seqlen < 1:
        fail(f"u must have L >= 1, got {_shape(u)}")
    if A.dim() != 2 or A.shape[0] != dim:
        fail(f"A must be (dim, N) = ({dim}, N), got {_shape(A)} (u: {_shape(u)})")
    if A.dtype != torch.float32:
        fail(f"A must be float32, got {_shape(A)}")
    dstate = A.shape[1]
    if not 1 <= dstate <= MAX_DSTATE:
        fail(f"A's N must be in [1, {MAX_DSTATE}], got {_shape(A)}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != dstate or t.shape[3] != seqlen:
            fail(f"{name} must be (batch, groups, N, L) = ({batch}, groups, {dstate}, {seqlen}), got {_shape(t)}")
    if B.shape[1] != C.shape[1]:
        fail(f"B and C must have the same groups, got B {_shape(B)} and C {_shape(C)}")
    groups = B.shape[1]
    if groups < 1 or dim % groups != 0:
        fail(f"dim {dim} must be divisible by groups {groups} (u: {_shape(u)}, B: {_shape(B)})")
    per_channel = (("delta", delta), ("z", z))
    for name, t in per_channel:
        if t is not None and tuple(t.shape) != (batch, dim, seqlen):
            fail(f"{name} must have u's shape {tuple(u.shape)}, got {_shape(t)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and (t.dim() != 1 or t.shape[0] != dim):
            fail(f"{name} must be (dim,) = ({dim},), got {_shape(t)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, dstate):
        fail(f"initial_state must be (batch, dim, N) = ({batch}, {dim}, {dstate}), got {_shape(initial_state)}")
    named = [("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z)]
    named += [("delta_bias", delta_bias), ("initial_state", initial_state)]
    for name, t in named:
        if t is not None and t.dtype not in _FLOAT_IO:
            fail(f"{name} must be float32, float16 or bfloat16, got {_shape(t)}")
        if t is not None and t.device != u.device:
            fail(f"all tensors must be on one device: u is {_shape(u)}, {name} is {_shape(t)}")


_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class _Config:
    """Block sizes of one call; chosen from the shape by ``_config`` (a table, no runtime autotuning)."""

    block_d: int  # forward channels per program, one per thread
    block_d_bwd: int  # the same for the backward
    block_n: int  # N rounded up to a power of two
    t_tile: int  # forward steps per loaded tile, unrolled
    t_tile_bwd: int  # the same for the backward's forward-in-time kernel
    maxnreg: int | None  # register cap of the forward kernels (None: the compiler's choice)
    chunk_len: int  # steps per chunk; chunks are the unit of sequence parallelism
    n_chunks: int
    prefetch: int = 0  # tiles ahead that the time loops prefetch B/C (and the tiles below); 0: none
    prefetch_io: bool = False  # whether they also prefetch the per-channel tiles (u, delta, z, ...)
    lane_sums: bool = False  # the backward sums dB/dC over a warp's channels by reduce-scatter (triton._lane_sum_ptx)
    fast_math: bool = False  # the forward's softplus and sigmoid through the GPU's approximate lg2 / rcp
    t_tile_rev: int = 1  # the same for its reverse-in-time kernel
    fast_math_bwd: int = 0  # fast_math in the backward kernels: bit 0 the forward-in-time one, bit 1 the reverse
    combine_prefetch: int = 0  # chunks ahead that the chunk combine prefetches into L1; 0: none

    @property
    def longest_tile(self) -> int:
        """Steps of the longest tile of any pass: B/C are padded by this many steps past L."""
        return max(self.t_tile, self.t_tile_bwd, self.t_tile_rev)


# Channels per program of the chunk combine, a short sequential pass over the chunks: one warp each, so that a
# narrow layer (d_inner 512: 16 programs) still spreads over some SMs; it was 128 channels (4 programs) before.
_COMBINE_BLOCK_D = 32


def _sm_count(device: torch.device) -> int:
    # The interpreter: 2, a few chunks per sequence, so that tests cross chunk boundaries.
    return cuda_sm_count(device) if device.type == "cuda" else 2


# Overrides of _config's choices, for benchmarks/bench_scan.py --variants and tests only. Keys: block_d,
# block_d_bwd, t_tile, t_tile_bwd (the backward's forward-in-time kernel), t_tile_rev (its reverse-in-time one),
# maxnreg, maxnreg_bwd (both backward kernels), maxnreg_rev, programs_per_sm, chunk_len (a multiple of the tiles),
# prefetch (tiles ahead; 0 turns the prefetch off), combine_prefetch (chunks ahead), and the 0 / 1 switches
# lane_sums and fast_math, fast_math_bwd (bit 0: the backward's forward-in-time kernel, bit 1: its reverse one),
# transpose_bwd (0: the backward runs on time-contiguous inputs as they are), transpose_bwd_min_n (the smallest N
# whose backward copies them to channel-last), transpose_fwd (0: the forward runs on them as they are) and
# transpose_fwd_max_n (the largest N whose forward copies them, and y back).
_TUNING: dict[str, int] = {}


def _config(
    batch: int, dim: int, groups: int, dstate: int, seqlen: int, device: torch.device, sms: int | None = None,
    channel_last: bool = True,
) -> _Config:
    """Block sizes from the shape (memoised: a model's pieces and layers ask for the same few shapes, and working
    them out took about 0.2 ms of Python per call)."""
    sms = _sm_count(device) if sms is None else sms
    return _config_for(batch, dim, groups, dstate, seqlen, device.type, sms, channel_last, tuple(_TUNING.items()))


@functools.lru_cache(maxsize=1024)
def _config_for(
    batch: int, dim: int, groups: int, dstate: int, seqlen: int, device_type: str, sms: int, channel_last: bool,
    tuning: tuple,
) -> _Config:
    """Block sizes from the shape. Measured on an H100 (benchmarks/RESULTS.md, selective scan): occupancy is what limits
    these kernels, so the choices below trade unrolling for registers; larger unrolls hoist the loads of every
    step of a tile and leave 2 programs per SM."""
    dim_per_group = dim // groups
    block_n = triton.next_power_of_2(dstate)
    pow2 = triton.next_power_of_2(dim_per_group)
    # 64 channels per forward program at N 64, whose state alone fills a thread's registers: S3 N 64 forward
    # 33.9 -> 23.4 ms (H100, channel-last) against 128 channels.
    block_d = _TUNING.get("block_d", min(64 if block_n >= 64 else 128, pow2))
    # Forward steps per tile, measured on an H100 (benchmarks/RESULTS.md). Channel-last (the model's layout), whose
    # per-channel tiles are prefetched: 2 steps up to N 32 (S0 / S1 D 256: 4 steps 39.1 / 6.8 ms, 2 steps 31.5 /
    # 5.6; S3 N 8: 7.3 -> 6.0 ms), 4 at N 64 (23.3 ms; 1 step 50.1). Contiguous: 4 steps at every N (S3, L 2^18:
    # N 8 9.2 ms, N 16 11.9, N 32 14.5 where 1 step took 41.0, N 64 22.6 where 1 step took 52.8).
    t_tile = 2 if channel_last and block_n <= 32 else 4
    t_tile = _TUNING.get("t_tile", t_tile)
    # The backward: one warp per program (its dB/dC channel sums then stay inside the warp, no shared-memory round)
    # and short tiles. Measured (benchmarks/RESULTS.md): channel-last inputs (the model's layout) at N 16, S0 161 ->
    # 89 ms and S1 D 256 26 -> 16 ms; (batch, dim, L)-contiguous inputs at L 2^18, N 8 64 -> 29 ms, N 32 78 -> 51,
    # N 64 1197 -> 519, but N 16 38 -> 53 ms, so that one case keeps 64 channels and 4 steps.
    if block_n == 16 and not channel_last:
        block_d_bwd, t_tile_bwd = min(64, pow2), 4
    else:
        block_d_bwd, t_tile_bwd = min(32, pow2), {16: 2, 32: 2}.get(block_n, min(4, max(1, 64 // block_n)))
    block_d_bwd = _TUNING.get("block_d_bwd", block_d_bwd)
    t_tile_bwd = _TUNING.get("t_tile_bwd", t_tile_bwd)
    # At N <= 16 a 128-register cap lets 4 programs share an SM (measured: 55 -> 49 ms at S0); larger N needs
    # more than 128 registers for its state alone.
    maxnreg = _TUNING.get("maxnreg", 128 if block_n <= 16 and device_type == "cuda" else None)
    n_dblk = triton.cdiv(dim_per_group, block_d)
    programs_per_chunk = batch * groups * n_dblk
    # Enough chunks that every SM holds a few programs; a chunk much shorter than ~256 steps would spend more
    # on its boundary state and the combine than it gains.
    # The reverse-in-time kernel walks 1-step tiles at N <= 32: 80 registers instead of 128, and S0's backward
    # 62.9 -> 62.1 ms, S1 D 256 10.88 -> 10.78, D 512 21.35 -> 21.09 (H100); the forward-in-time kernel keeps 2.
    t_tile_rev = _TUNING.get("t_tile_rev", 1 if block_n <= 32 and t_tile_bwd == 2 else t_tile_bwd)
    step = max(t_tile, t_tile_bwd, t_tile_rev)  # all powers of two: chunks hold whole tiles of every pass
    min_chunk = 256 if device_type == "cuda" else 2 * step

    def chunk_len_at(programs_per_sm: int) -> int:
        want_chunks = triton.cdiv(programs_per_sm * sms, programs_per_chunk)
        return max(min_chunk, triton.cdiv(triton.cdiv(seqlen, want_chunks), step) * step)

    # 4 forward programs per SM fill an H100 once (4 warps each at 128 registers). Where that already cuts the
    # sequence into chunks, 3 (or 2) waves of programs even out the SMs' finishing times, as long as chunks keep
    # 2048 steps or more (H100, fwd / bwd ms: S0 24.6 / 62.3 -> 23.8 / 60.9 at 12 per SM; S1 D 512 8.36 / 21.07
    # -> 8.21 / 20.61; D 256 would get 1324-step chunks and lose, 4.40 -> 4.64 ms forward; 6 per SM, 1.5 waves,
    # lost everywhere: S0 26.8 / 68.3). A single chunk stays single: it needs no chunk-local pass at all.
    chunk_len = chunk_len_at(4)
    if "programs_per_sm" in _TUNING:
        chunk_len = chunk_len_at(_TUNING["programs_per_sm"])
    elif chunk_len < seqlen and block_n <= 16:  # measured with the 128-register forward of N <= 16
        chunk_len = next((c for c in (chunk_len_at(12), chunk_len_at(8)) if c >= 2048), chunk_len)
    chunk_len = min(_TUNING.get("chunk_len", chunk_len), triton.cdiv(seqlen, step) * step)
    # The next tile's B/C rows (and, channel-last, its per-channel tiles: see triton._prefetch) are prefetched into
    # L1 on a GPU: S0 forward 43.0 -> 39.1 ms and backward 90.1 -> 80.9 at the tiles of that time.
    prefetch = _TUNING.get("prefetch", 1) if device_type == "cuda" else 0  # inline PTX: not in the interpreter
    # The reduce-scatter is inline PTX (a GPU) over one warp that holds the block's 32 channels, one per lane;
    # below 8 states it would shuffle more than tl.sum does.
    lane_sums = device_type == "cuda" and block_d_bwd == 32 and block_n >= 8
    lane_sums = bool(_TUNING.get("lane_sums", lane_sums))
    fast_math = bool(_TUNING.get("fast_math", device_type == "cuda"))
    return _Config(
        block_d, block_d_bwd, block_n, t_tile, t_tile_bwd, maxnreg, chunk_len, triton.cdiv(seqlen, chunk_len),
        prefetch, channel_last and prefetch > 0, lane_sums, fast_math, t_tile_rev,
        _TUNING.get("fast_math_bwd", 0) if fast_math else 0,
        _TUNING.get("combine_prefetch", 8) if prefetch else 0,
    )


def _new(*shape: int, dtype: torch.dtype = torch.float32, device: torch.device) -> torch.Tensor:
    return new_buffer(shape, dtype, device, POISON_OUTPUTS)


def _empty_like_layout(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A new (batch, dim, L) tensor laid out like x: channel-fastest stays channel-fastest (the model's layout)."""
    batch, dim, seqlen = x.shape
    dtype = x.dtype if dtype is None else dtype
    if x.stride(1) == 1 and dim > 1:
        return _new(batch, seqlen, dim, dtype=dtype, device=x.device).transpose(1, 2)
    return _new(batch, dim, seqlen, dtype=dtype, device=x.device)


def _pack_bc(B: torch.Tensor, C: torch.Tensor, block_n: int, pad: int) -> torch.Tensor:
    """B and C as one zero-padded (batch, groups, L + pad, 2, block_n) fp32 buffer.

    Every thread reads all N values of B_t and C_t at every step, so they must sit together in fp32; the copy is
    O(batch * groups * L * N), a small fraction of the scan's O(batch * dim * L) traffic.
    """
    batch, groups, dstate, seqlen = B.shape
    bc = torch.zeros(batch, groups, seqlen + pad, 2, block_n, dtype=torch.float32, device=B.device)
    bc[:, :, :seqlen, 0, :dstate] = B.permute(0, 1, 3, 2)
    bc[:, :, :seqlen, 1, :dstate] = C.permute(0, 1, 3, 2)
    return bc


def _a2t(A: torch.Tensor, block_n: int) -> torch.Tensor:
    """A * log2(e) as a zero-padded (block_n, dim) buffer: exp(dt A) = exp2(dt A2), read along channels."""
    dim, dstate = A.shape
    a2t = torch.zeros(block_n, dim, dtype=torch.float32, device=A.device)
    a2t[:dstate] = (A.float() * _LOG2E).t()
    return a2t


class ScanParams(NamedTuple):
    """The per-channel parameters in the kernels' form; the same for every piece of a sequence, so a caller that
    scans one in pieces (the fused Mamba block) prepares them once (``prepare_params``)."""

    a2t: torch.Tensor  # A * log2(e), (block_n, dim) fp32, zero past N
    D: torch.Tensor | None  # (dim,) fp32, contiguous
    delta_bias: torch.Tensor | None  # (dim,) fp32, contiguous


def prepare_params(A: torch.Tensor, D: torch.Tensor | None, delta_bias: torch.Tensor | None) -> ScanParams:
    """A, D and delta_bias as ``scan_forward`` and ``scan_backward`` read them."""
    return ScanParams(
        _a2t(A, triton.next_power_of_2(A.shape[1])),
        None if D is None else D.float().contiguous(),
        None if delta_bias is None else delta_bias.float().contiguous(),
    )


def _channel_last(*tensors: torch.Tensor | None) -> bool:
    """Whether every given (batch, dim, L) tensor has a unit channel stride (the kernels' CHANNEL_LAST form)."""
    return all(t is None or t.shape[1] == 1 or t.stride(1) == 1 for t in tensors)


def _strides(t: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if t is None else tuple(t.stride())


def _dummy(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like if t is None else t


def scan_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, params: ScanParams | None = None):
    """The Triton forward without autograd: (y, final_state, chunk_states, config).

    ``chunk_states`` (the state entering each chunk, and the final one) and ``config`` are what ``scan_backward``
    needs besides the inputs. Callers that recompute u or delta in their own backward (the fused Mamba mixer)
    use this pair directly; everyone else goes through ``selective_scan``. Arguments are checked there.
    ``params``: ``prepare_params(A, D, delta_bias)``, when the caller has it already.
    """
    from dna_mamba.kernels.selective_scan import triton as kernels

    batch, dim, seqlen = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    cfg = _config(batch, dim, groups, dstate, seqlen, u.device, channel_last=u.stride(1) == 1 and seqlen > 1)
    dev = u.device
    n_dblk = triton.cdiv(dim // groups, cfg.block_d)
    bc = _pack_bc(B, C, cfg.block_n, cfg.longest_tile)
    a2t, Df, biasf = prepare_params(A, D, delta_bias) if params is None else params
    y = _empty_like_layout(u)
    final = _new(batch, dim, dstate, device=dev)
    # Entry c is the state entering chunk c; entry n_chunks the final state. Saved for the backward.
    states = _new(batch, cfg.n_chunks + 1, cfg.block_n, dim, device=dev)
    hloc = _new(*states.shape, device=dev)
    dtsum = _new(batch, cfg.n_chunks + 1, dim, device=dev)

    dims = (dim, dstate, seqlen, cfg.chunk_len, cfg.n_chunks, groups, dim // groups, n_dblk, bc.shape[2], 0)
    strides = (*u.stride(), *delta.stride(), *_strides(z), *y.stride())
    meta = dict(
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        BLOCK_D=cfg.block_d, BLOCK_N=cfg.block_n, T_TILE=cfg.t_tile, num_warps=max(1, cfg.block_d // 32),
        PREFETCH=cfg.prefetch, PREFETCH_IO=cfg.prefetch_io, FAST_MATH=cfg.fast_math,
        CHANNEL_LAST=_channel_last(u, delta, z, y), **LAUNCH_OPTIONS,
    )
    if cfg.maxnreg is not None:
        meta["maxnreg"] = cfg.maxnreg
    ptrs = (u, delta, _dummy(z, u), y, a2t, _dummy(Df, a2t), _dummy(biasf, a2t), bc, states, hloc, dtsum, final)
    with device_guard(u):
        if cfg.n_chunks > 1:
            # The last chunk's local pass would only feed the final state, which the output pass produces.
            kernels._fwd_kernel[(batch * groups * n_dblk, cfg.n_chunks - 1)](
                *ptrs, *dims, *strides, LOCAL=True, **meta
            )
        kernels._chunk_combine_kernel[(batch, triton.cdiv(dim, _COMBINE_BLOCK_D))](
            a2t, dtsum, hloc, _dummy(initial_state, a2t), states, final, dim, cfg.n_chunks, dstate,
            *_strides(initial_state),
            HAS_FIRST=initial_state is not None, REVERSE=False, BLOCK_N=cfg.block_n, BLOCK_D=_COMBINE_BLOCK_D,
            PREFETCH=cfg.combine_prefetch, num_warps=1, **LAUNCH_OPTIONS,
        )
        kernels._fwd_kernel[(batch * groups * n_dblk, cfg.n_chunks)](*ptrs, *dims, *strides, LOCAL=False, **meta)
    return y, final, states, cfg


def scan_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states, cfg, delta_softplus, dy, dfinal,
                  y_out: torch.Tensor | None = None, overwrite_u_delta: bool = False, params: ScanParams | None = None):
    """Gradients of ``scan_forward``'s (y, final_state) for every input, from the inputs and its chunk states.

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state), None where the input is None.
    ``y_out``: a (batch, dim, L) tensor that also receives the output y, which the backward recomputes on its way
    (the fused block needs it for out_proj's weight gradient and does not keep the forward's).
    ``overwrite_u_delta``: u and delta are the caller's scratch copies, and du and ddelta are written over them
    (the reverse kernel reads each element of u and delta in the iteration that writes its gradient, and no
    program reads another's elements). ``params``: as for ``scan_forward``.
    """
    from dna_mamba.kernels.selective_scan import triton as kernels

    states = chunk_states
    batch, dim, seqlen = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    dim_per_group = dim // groups
    n_dblk = triton.cdiv(dim_per_group, cfg.block_d_bwd)
    dev = u.device
    if dy is None:
        dy = torch.zeros_like(u)
    bc = _pack_bc(B, C, cfg.block_n, cfg.longest_tile)
    bc_len = bc.shape[2]
    a2t, Df, biasf = prepare_params(A, D, delta_bias) if params is None else params
    du = u if overwrite_u_delta else _empty_like_layout(u)
    ddelta = delta if overwrite_u_delta else _empty_like_layout(delta)
    dz = None if z is None else _empty_like_layout(z)
    beta = _new(batch, seqlen, dim, device=dev).transpose(1, 2)  # read in (step, channel) rows
    meta = dict(
        HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        BLOCK_D=cfg.block_d_bwd, BLOCK_N=cfg.block_n,
        num_warps=max(1, cfg.block_d_bwd // 32), PREFETCH=cfg.prefetch, PREFETCH_IO=cfg.prefetch_io,
        # The approximate softplus / sigmoid speed up the forward (S0 27.6 -> 24.9 ms) but slow the backward
        # (62.9 -> 67.4 ms, H100; measured again in the eighth session, though they cut its instructions per
        # (l, d, n) from 54 to 48), so the backward keeps the precise ones unless fast_math_bwd is set.
        CHANNEL_LAST=_channel_last(u, delta, z, dy, du, ddelta, dz, beta, y_out),
        **LAUNCH_OPTIONS,
    )
    # The reduce-scatter needs one channel per lane, which the channel-last form of the addresses guarantees.
    meta["LANE_SUMS"] = cfg.lane_sums and meta["CHANNEL_LAST"]
    if "maxnreg_bwd" in _TUNING:
        meta["maxnreg"] = _TUNING["maxnreg_bwd"]
    rev_opts = {"maxnreg": _TUNING["maxnreg_rev"]} if "maxnreg_rev" in _TUNING else {}
    gloc = _new(*states.shape, device=dev)
    carries = _new(*states.shape, device=dev)
    dtsum = _new(batch, cfg.n_chunks + 1, dim, device=dev)
    dinit = _new(batch, dim, dstate, device=dev)
    dbc = _new(batch, groups, n_dblk, bc_len, 2, cfg.block_n, device=dev)
    dA = _new(*states.shape, device=dev)
    mom = _new(*states.shape, device=dev)
    dD = _new(batch, cfg.n_chunks + 1, dim, device=dev)
    dbias = _new(batch, cfg.n_chunks + 1, dim, device=dev)
    dims = (dim, seqlen, cfg.chunk_len, cfg.n_chunks, groups, dim_per_group, n_dblk, bc_len, 0)
    grid = (batch * groups * n_dblk, cfg.n_chunks)
    zz = _dummy(z, u)
    in_strides = (*u.stride(), *delta.stride(), *_strides(z), *dy.stride(), *beta.stride())

    with device_guard(u):
        common = (u, delta, zz, dy, a2t, _dummy(Df, a2t), _dummy(biasf, a2t), bc, states)
        kernels._bwd_forward_kernel[grid](
            *common, _dummy(dz, u), _dummy(y_out, u), beta, dbc, dA, mom, gloc, dtsum, dD, *dims, *in_strides,
            *_strides(dz), *_strides(y_out), HAS_D=D is not None, STORE_Y=y_out is not None, T_TILE=cfg.t_tile_bwd,
            FAST_MATH=bool(cfg.fast_math_bwd & 1), **meta,
        )
        kernels._chunk_combine_kernel[(batch, triton.cdiv(dim, _COMBINE_BLOCK_D))](
            a2t, dtsum, gloc, _dummy(dfinal, a2t), carries, dinit, dim, cfg.n_chunks, dstate, *_strides(dfinal),
            HAS_FIRST=dfinal is not None, REVERSE=True, BLOCK_N=cfg.block_n, BLOCK_D=_COMBINE_BLOCK_D,
            PREFETCH=cfg.combine_prefetch, num_warps=1, **LAUNCH_OPTIONS,
        )
        kernels._bwd_reverse_kernel[grid](
            *common, carries, beta, du, ddelta, dbc, dbias, *dims, *in_strides, *du.stride(), *ddelta.stride(),
            HAS_D=D is not None, T_TILE=cfg.t_tile_rev, FAST_MATH=bool(cfg.fast_math_bwd & 2), **(meta | rev_opts),
        )
    # Per-chunk and per-channel-block partials, summed in a fixed order: bit-identical results every run.
    n_chunks = cfg.n_chunks
    dbc = dbc.sum(2)[:, :, :seqlen, :, :dstate]  # (batch, groups, L, 2, N)
    dB = dbc[:, :, :, 0].permute(0, 1, 3, 2).to(B.dtype)
    dC = dbc[:, :, :, 1].permute(0, 1, 3, 2).to(C.dtype)
    # The moment term of dA needs the gradient leaving each chunk, known only after the combine.
    dA = (dA[:, :n_chunks] + carries[:, :n_chunks] * mom[:, :n_chunks]).sum((0, 1))[:dstate].t().to(A.dtype)
    dD = None if D is None else dD[:, :n_chunks].sum((0, 1)).to(D.dtype)
    dbias = None if delta_bias is None else dbias[:, :n_chunks].sum((0, 1)).to(delta_bias.dtype)
    dinit = None if initial_state is None else dinit.to(initial_state.dtype)
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dinit


def _copies_pay(dstate: int, *tensors: torch.Tensor | None, forward: bool = False) -> bool:
    """Whether the scan runs on channel-last copies of time-contiguous (batch, dim, L) inputs.

    The kernels read time-contiguous inputs a few steps of each channel at a time, which is slow; a tiled transpose
    (``dna_mamba.kernels.layout``, 2.4 ms per 3 GiB on an H100) costs less than that. Measured on an H100
    (benchmarks/RESULTS.md, bf16, fwd / bwd ms as given -> on copies): S0 38.1 / 132.2 -> 33.4 / 70.4, S1 D 256
    6.84 / 22.6 -> 5.91 / 12.4, S3 N 8 8.42 / 18.2 -> 6.65 / 15.4, N 64 24.6 / 757 -> 25.9 / 113, so the forward
    (whose copies include y's way back to the inputs' layout) keeps N 64 as given. The price is memory: the
    backward holds copies of u, delta, z and dy, du and ddelta written over the first two (S0: 9.25 -> 18.25 GiB
    peak extra). The rule depends on shapes and
    strides only, never on free memory, so the same inputs always take the same path (bit-identical dB and dC).
    """
    time_contiguous = all(t is None or (t.stride(2) == 1 and t.shape[1] > 1 and t.shape[2] > 1) for t in tensors)
    if not time_contiguous:
        return False
    if forward:
        return bool(_TUNING.get("transpose_fwd", 1)) and dstate <= _TUNING.get("transpose_fwd_max_n", 32)
    return bool(_TUNING.get("transpose_bwd", 1)) and dstate >= _TUNING.get("transpose_bwd_min_n", 1)


def _to_channel_last(t: torch.Tensor | None) -> torch.Tensor | None:
    """The same (batch, dim, L) values with unit channel stride (one copy)."""
    return None if t is None else relayout(t, channel_last=True)


def _channel_last_backward_config(cfg: _Config, u: torch.Tensor, groups: int, dstate: int) -> _Config:
    """The backward's blocks for channel-last copies, keeping the forward's chunks (whose states it saved).

    Channel-last tiles are never longer than time-contiguous ones and all are powers of two, so the forward's chunk
    length holds whole tiles of the backward's.
    """
    batch, dim, seqlen = u.shape
    cl = _config(batch, dim, groups, dstate, seqlen, u.device, channel_last=True)
    assert cfg.chunk_len % cl.longest_tile == 0, (cfg, cl)
    return replace(cl, chunk_len=cfg.chunk_len, n_chunks=cfg.n_chunks)


class _SelectiveScanTriton(torch.autograd.Function):
    """Saves the inputs and the state at each chunk boundary; the backward recomputes everything else."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        ctx.copied_forward = _copies_pay(A.shape[1], u, delta, z, forward=True)
        if ctx.copied_forward:
            uc, deltac, zc = (_to_channel_last(t) for t in (u, delta, z))
            y, final, states, cfg = scan_forward(uc, deltac, A, B, C, D, zc, delta_bias, initial_state, delta_softplus)
            del uc, deltac, zc
            y = relayout(y, channel_last=False)
        else:
            y, final, states, cfg = scan_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, states)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.cfg = cfg
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        u, delta, A, B, C, D, z, delta_bias, initial_state, states = ctx.saved_tensors
        cfg = ctx.cfg
        dstate = A.shape[1]
        copies = ctx.copied_forward or _copies_pay(dstate, u, delta, z)  # dy is copied whatever its layout
        if copies:
            # The gradients come out channel-last, which autograd accepts for any input layout.
            if not ctx.copied_forward:
                cfg = _channel_last_backward_config(cfg, u, B.shape[1], dstate)
            u, delta, z, dy = (_to_channel_last(t) for t in (u, delta, z, dy))
        # The copies are ours: du and ddelta overwrite u's and delta's (S0: 6 GiB less at the peak).
        grads = scan_backward(
            u, delta, A, B, C, D, z, delta_bias, initial_state, states, cfg, ctx.delta_softplus, dy, dfinal,
            overwrite_u_delta=copies,
        )
        return *grads, None


def _selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    return _SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan of Mamba-1, differentiable in every input, starting from an optional state.

    dt = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias;
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t;  y_t = <h_t, C_t> + D * u_t;  y *= silu(z).
    Channel d reads group d // (dim // groups) of B and C. State and accumulation are fp32 whatever the I/O
    dtype. The gradient of final_state flows back, so a sequence scanned in segments with carried state
    backpropagates exactly as one pass.

    Args:
        backend: "auto" (Triton for CUDA tensors, the reference otherwise), "triton" or "reference".

    Shapes:
        u, delta, z: (batch, dim, L), fp32 / fp16 / bf16, any strides. Channel-last ones (unit channel stride,
            as views of a (batch, L, dim) projection: the model's layout) are fastest and leanest; (batch, dim,
            L)-contiguous ones run on channel-last copies (the backward holds 4 copies the size of u; their
            gradients come back channel-last).
        A: (dim, N) fp32, N <= 64;  D, delta_bias: (dim,)
        B, C: (batch, groups, N, L), dim divisible by groups
        initial_state: (batch, dim, N)
        returns y (batch, dim, L) in u's dtype, and final_state (batch, dim, N) fp32 if return_final_state

    Raises:
        ValueError: on wrong ranks or shapes, dtypes, devices or backend, before any kernel runs.
    """
    global _warned_fallback
    _check_args(u, delta, A, B, C, D, z, delta_bias, initial_state, backend)
    use_triton = backend == "triton" or (backend == "auto" and u.is_cuda and triton is not None)
    if use_triton and triton is None:
        raise ValueError("selective_scan: backend='triton' needs the triton package, which is not installed")
    if use_triton:
        y, final_state = _selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    else:
        if backend == "auto" and not _warned_fallback:
            logger.info("selective_scan: %s tensors, using the pure-PyTorch reference", u.device.type)
            _warned_fallback = True
        y, final_state = selective_scan_ref(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state=True
        )
    return (y, final_state) if return_final_state else y
