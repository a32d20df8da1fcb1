"""Generators of malformed and hostile wire messages, shared by the fuzz tests and the benchmark.

Every generator yields ``(kind, value)``: ``kind`` names what was done to the message (for
tallies in test output), ``value`` is the bytes a producer would send.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import numpy as np

from ecgstream.streaming.wire import (
    INT16_MISSING,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_LEADS,
    MAX_SAMPLES,
    VERSION,
    Chunk,
    WireError,
    decode,
    encode_binary,
    encode_json,
    plausible_limit,
)

__all__ = [
    "good_chunk",
    "random_frames",
    "mutated_frames",
    "hostile_headers",
    "check_decode",
    "REASONS",
]

#: reasons the decoder may give; anything else (or another exception type) is a bug
REASONS = {
    "empty",
    "too_large",
    "unknown_encoding",
    "bad_json",
    "missing_field",
    "unknown_field",
    "bad_stream",
    "bad_seq",
    "bad_t0",
    "bad_fs",
    "bad_leads",
    "bad_units",
    "bad_n",
    "bad_samples",
    "truncated",
    "bad_version",
    "bad_sample_type",
    "bad_header_size",
    "bad_length",
    "bad_gain",
    "bad_baseline",
    "key_mismatch",
    "out_of_range",
}

_FIXED = struct.Struct("<BBBBI")


def good_chunk(
    rng: np.random.Generator, stream: str = "m1", seq: int = 0, n: int = 250, n_leads: int = 1
) -> Chunk:
    """A valid chunk of ECG-like noise (mV)."""
    x = (rng.standard_normal((n, n_leads)) * 0.3).astype(np.float32)
    leads = ["MLII", "V1", "V2", "V3", "V4", "V5", "I", "II", "III", "aVR", "aVL", "aVF", "V6"][
        :n_leads
    ]
    return Chunk(stream, seq, 1.7e9 + seq, 250.0, leads, x)


def check_decode(value: bytes, key: bytes | None = None) -> str | Chunk:
    """Decode ``value``: the WireError reason, or the chunk after checking its invariants.

    Raises AssertionError when the decoder fails in any other way (a crash of the worker).
    """
    try:
        chunk = decode(value, key)
    except WireError as exc:
        assert exc.reason in REASONS, f"unexpected reason {exc.reason!r}"
        return exc.reason
    except Exception as exc:  # noqa: BLE001 - that is exactly what the fuzzer looks for
        raise AssertionError(
            f"decode raised {type(exc).__name__}: {exc} on {value[:120]!r}"
        ) from exc
    s = chunk.samples
    assert s.dtype == np.float32 and s.ndim == 2 and s.shape[1] == len(chunk.leads)
    assert 1 <= s.shape[0] <= MAX_SAMPLES and 1 <= len(chunk.leads) <= MAX_LEADS
    assert not np.isinf(s).any(), "inf samples passed the decoder"
    # every value is physically plausible; int16 samples at the ADC limits (saturation) aside
    values = s if chunk.adc is None else np.where(np.abs(chunk.adc) >= 32767, np.nan, s)
    limit = plausible_limit(chunk.units)
    assert not (np.abs(values) > limit * (1 + 1e-6)).any(), "implausible samples passed"
    assert chunk.fs > 0 and np.isfinite(chunk.fs) and np.isfinite(chunk.t0)
    assert isinstance(chunk.seq, int) and chunk.seq >= 0
    return chunk


def random_frames(rng: np.random.Generator, n: int) -> Iterator[tuple[str, bytes]]:
    """Random bytes, some starting with the binary magic or a JSON brace."""
    for i in range(n):
        size = int(rng.integers(0, 600))
        body = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        mode = i % 4
        if mode == 1:
            body = bytes([MAGIC, VERSION, int(rng.integers(0, 4)), 0]) + body
        elif mode == 2:
            body = b"{" + body
        elif mode == 3:
            hlen = int(rng.integers(0, 2**32))
            body = _FIXED.pack(MAGIC, VERSION, 1, 0, hlen) + body
        yield f"random/{mode}", body


def mutated_frames(rng: np.random.Generator, n: int) -> Iterator[tuple[str, bytes]]:
    """Valid binary and JSON frames, then truncated, extended, bit-flipped or re-headed."""
    for i in range(n):
        c = good_chunk(rng, seq=i, n=int(rng.integers(1, 300)), n_leads=int(rng.integers(1, 4)))
        enc = i % 3
        v = encode_json(c) if enc == 0 else encode_binary(c, "int16" if enc == 1 else "float32")
        op = int(rng.integers(0, 7))
        if op == 0:  # truncated anywhere
            yield "truncated", v[: int(rng.integers(0, len(v)))]
        elif op == 1:  # trailing garbage (wrong length)
            yield (
                "extended",
                v + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes(),
            )
        elif op == 2:  # a few flipped bytes
            b = bytearray(v)
            for j in rng.integers(0, len(b), int(rng.integers(1, 5))):
                b[j] ^= int(rng.integers(1, 256))
            yield "bitflip", bytes(b)
        elif op == 3 and enc:  # unknown version or sample type
            b = bytearray(v)
            b[1 + int(rng.integers(0, 2))] = int(rng.integers(3, 256))
            yield "version", bytes(b)
        elif op == 4 and enc:  # header length field lies
            b = bytearray(v)
            _, _, _, _, hlen = _FIXED.unpack_from(b)
            b[4:8] = struct.pack("<I", max(0, hlen + int(rng.integers(-40, 40))))
            yield "header_length", bytes(b)
        elif op == 5 and enc:  # float32 NaN and inf samples
            x = c.samples.copy()
            x[int(rng.integers(0, len(x))), 0] = [np.inf, -np.inf, np.nan][int(rng.integers(0, 3))]
            yield (
                "nonfinite",
                encode_binary(Chunk(c.stream, c.seq, c.t0, c.fs, c.leads, x), "float32"),
            )
        elif enc == 0:  # one sample row with a wrong number of leads
            obj = json.loads(v)
            r = int(rng.integers(0, len(obj["samples"])))
            obj["samples"][r] = obj["samples"][r] + [0.5]
            yield "row_length", json.dumps(obj).encode()
        else:  # one sample more than the header says
            yield "body_length", v + b"\x00" * (2 if enc == 1 else 4) * len(c.leads)


def _header_frame(hdr: dict, body: bytes, type_code: int = 1, version: int = VERSION) -> bytes:
    h = json.dumps(hdr, separators=(",", ":")).encode()
    return _FIXED.pack(MAGIC, version, type_code, 0, len(h)) + h + body


def hostile_headers(rng: np.random.Generator, n: int) -> Iterator[tuple[str, bytes]]:
    """Frames whose header fields are wrong: absurd rates, lead counts, sizes, values, types."""
    base = {
        "stream": "m1",
        "seq": 0,
        "t0": 1.7e9,
        "fs": 250.0,
        "leads": ["MLII"],
        "units": "mV",
        "n": 10,
    }
    hostile = {
        "fs": [0, -1, 1e-300, 1e300, 10**400, "250", None, True, float("nan"), 20000.1, [250]],
        "seq": [-1, 2**63, 10**400, 1.5, "0", None, True],
        "t0": [-1, 1e12, 10**400, "now", None, float("inf")],
        "leads": [
            [],
            ["MLII"] * 2,
            [f"L{i}" for i in range(17)],
            [""],
            ["x" * 17],
            [1],
            "MLII",
            ["\x00"],
        ],
        "stream": ["", "x" * 129, 5, None, "a\nb", ["m1"]],
        "n": [0, -1, MAX_SAMPLES + 1, 10**400, 2**31, 2**62, "10", 1.0],
        "units": ["", "u" * 17, 3],
        "gain": [[0], [-1], [float("nan")], [1, 2], "200", [10**400], [None]],
        "baseline": [[float("inf")], [1, 2], ["0"], [10**400]],
        "extra": [1],
    }
    keys = list(hostile)
    for i in range(n):
        hdr = dict(base)
        k = keys[i % len(keys)]
        vals = hostile[k]
        hdr[k] = vals[int(rng.integers(0, len(vals)))]
        n_s = hdr["n"] if isinstance(hdr["n"], int) and 0 < hdr["n"] < 1000 else 10
        n_l = len(hdr["leads"]) if isinstance(hdr["leads"], list) and hdr["leads"] else 1
        body = rng.integers(-2000, 2000, n_s * n_l, dtype=np.int16).astype("<i2").tobytes()
        if i % 11 == 0:  # every sample missing
            body = np.full(n_s * n_l, INT16_MISSING, "<i2").tobytes()
        yield f"header/{k}", _header_frame(hdr, body)
        if i % 5 == 0:  # the same as JSON
            obj = {k2: v for k2, v in hdr.items() if k2 not in ("n", "gain", "baseline")}
            obj["samples"] = [[0.1] * n_l for _ in range(n_s)]
            yield f"json/{k}", json.dumps(obj).encode()
    # huge headers and deep nesting
    yield "huge_header", _header_frame({**base, "units": "x" * (MAX_HEADER_BYTES + 1)}, b"")
    yield "deep_json", b'{"stream":' + b"[" * 100000 + b"]" * 100000 + b"}"
    yield "deep_header", _FIXED.pack(MAGIC, VERSION, 1, 0, 4000) + b"[" * 4000
