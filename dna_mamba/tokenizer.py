"""Single-nucleotide tokenizer.

Token ids are chosen so that the four bases are 0..3 in the order A, C, G, T: the complement of base ``b``
is then ``3 - b``, and a genome store of uint8 token ids doubles as a 2-bit-friendly layout.

    A C G T N  PAD BOS EOS MASK
    0 1 2 3 4   5   6   7   8        (vocab padded to 16 for tensor-core friendly embedding shapes)

Lowercase (soft-masked repeats) maps to upper case; IUPAC ambiguity codes (R Y S W K M B D H V, and N)
map to N; anything else is an error naming where it occurred.
"""

from __future__ import annotations

import numpy as np
import torch

A, C, G, T, N = 0, 1, 2, 3, 4
PAD, BOS, EOS, MASK = 5, 6, 7, 8
NUM_BASES = 5  # A, C, G, T, N
VOCAB_SIZE = 16  # padded: ids 9..15 are unused
ID_TO_CHAR = "ACGTN"

_INVALID = 255
_ENCODE = np.full(256, _INVALID, dtype=np.uint8)
for _char, _id in zip("ACGT", (A, C, G, T), strict=True):
    _ENCODE[ord(_char)] = _id
    _ENCODE[ord(_char.lower())] = _id
# IUPAC ambiguity codes map to N. U (RNA) is deliberately not accepted: a DNA model given RNA is a user error.
for _char in "NRYSWKMBDHV":
    _ENCODE[ord(_char)] = N
    _ENCODE[ord(_char.lower())] = N
ENCODE_TABLE = _ENCODE  # public, read-only by convention: bytes -> token id, 255 marks an invalid byte

_DECODE = np.frombuffer(b"ACGTN" + b"?" * (256 - NUM_BASES), dtype=np.uint8).copy()

# Complement on ids: A<->T, C<->G, N and special tokens map to themselves.
_COMPLEMENT = np.arange(256, dtype=np.uint8)
_COMPLEMENT[[A, C, G, T]] = [T, G, C, A]
COMPLEMENT_TABLE = _COMPLEMENT


class InvalidSequenceError(ValueError):
    """A sequence holds a character that is neither a nucleotide nor an IUPAC code."""


def encode_bytes(data: bytes | bytearray | memoryview | np.ndarray, *, source: str = "<sequence>",
                 record: str | None = None, offset: int = 0) -> np.ndarray:
    """Encode raw sequence bytes (no newlines) into uint8 token ids.

    Args:
        data: the sequence as bytes or a uint8 array.
        source: file name (or other description) used in error messages.
        record: FASTA record name used in error messages.
        offset: 0-based position of ``data[0]`` within the record, so errors report record positions.

    Raises:
        InvalidSequenceError: naming the source, record, 1-based position and the offending character.
    """
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8, copy=False)
    ids = _ENCODE[raw]
    bad = np.flatnonzero(ids == _INVALID)
    if bad.size:
        pos = int(bad[0])
        char = chr(raw[pos])
        where = f"{source}" + (f", record '{record}'" if record is not None else "")
        raise InvalidSequenceError(
            f"{where}, position {offset + pos + 1}: invalid character {char!r} "
            f"(expected A, C, G, T, N or an IUPAC ambiguity code)"
        )
    return ids


def encode(sequence: str, **kwargs) -> np.ndarray:
    """Encode a DNA string into uint8 token ids (see :func:`encode_bytes`)."""
    try:
        data = sequence.encode("ascii")
    except UnicodeEncodeError as err:
        raise InvalidSequenceError(
            f"{kwargs.get('source', '<sequence>')}: non-ASCII character at position {err.start + 1}"
        ) from None
    return encode_bytes(data, **kwargs)


def decode(ids: np.ndarray | torch.Tensor | list[int]) -> str:
    """Token ids of bases back to a string (special tokens become '?')."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("token ids must lie in [0, 255]")
    return _DECODE[arr.astype(np.uint8)].tobytes().decode("ascii")


def reverse_complement(ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Reverse complement along the last axis, on token ids (numpy or torch, any leading shape)."""
    if isinstance(ids, torch.Tensor):
        table = torch.as_tensor(_COMPLEMENT, device=ids.device).to(torch.long)
        return table[ids.long()].to(ids.dtype).flip(-1)
    arr = np.asarray(ids)
    return _COMPLEMENT[arr.astype(np.uint8)].astype(arr.dtype, copy=False)[..., ::-1]
