"""The Kafka wire format of raw waveform chunks: JSON or a compact binary frame (docs/wire-format.md).

A message value is one :class:`Chunk`: consecutive samples of one stream. The first byte tells
the encodings apart: ``{`` (or JSON whitespace) starts a JSON object, ``0xEC`` a binary frame::

    offset  size  field
    0       1     magic 0xEC
    1       1     version (1)
    2       1     sample type: 1 = int16, 2 = float32 (little-endian)
    3       1     reserved, 0
    4       4     header length H, uint32 little-endian (at most MAX_HEADER_BYTES)
    8       H     UTF-8 JSON header: stream, seq, t0, fs, leads, units, n [, gain, baseline]
    8+H     ...   n x n_leads samples, sample-major (lead values of sample 0, then sample 1, ...)

Binary int16 samples are ADC units: physical = (raw - baseline) / gain per lead, and -32768
marks a missing sample (lead off), as in WFDB. Every field is validated and sizes are bounded;
anything wrong raises :class:`WireError` with a short machine-readable ``reason``. Decoded
sample values must be physically plausible: at most :data:`MAX_ABS_MV` (100 mV, in the chunk's
``units``) in magnitude, or the chunk is rejected with ``out_of_range`` (int16 samples at the
ADC limits +-32767 mark saturation and are exempt, up to :data:`MAX_ABS_SATURATED_MV`).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Chunk",
    "WireError",
    "decode",
    "encode_json",
    "encode_binary",
    "MAGIC",
    "VERSION",
    "MAX_MESSAGE_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_SAMPLES",
    "MAX_LEADS",
    "MAX_FS",
    "MIN_FS",
    "INT16_MISSING",
    "adc_clipped",
    "physical_leads",
    "MAX_ABS_MV",
    "MAX_ABS_SATURATED_MV",
    "plausible_limit",
]

MAGIC = 0xEC
VERSION = 1
#: largest accepted message value, bytes
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: largest accepted binary header, bytes
MAX_HEADER_BYTES = 4096
#: most samples per chunk (per lead); 1 s at 20 kHz, or a minute at 1 kHz
MAX_SAMPLES = 65536
#: most leads (channels) per stream
MAX_LEADS = 16
#: highest accepted sampling rate, Hz
MAX_FS = 20000.0
#: lowest accepted sampling rate, Hz
MIN_FS = 0.01
#: largest t0 (seconds since the Unix epoch), about year 5138
MAX_T0 = 1e11
#: largest accepted magnitude of gain and baseline (ADC units)
MAX_ADC = 1e9
#: largest plausible magnitude of a decoded sample, mV (body-surface ECG is a few mV; the
#: bound leaves room for electrode offsets and pacing spikes, and catches wrong gains)
MAX_ABS_MV = 100.0
#: largest magnitude an int16 sample at the ADC limits (saturation) may convert to, mV
MAX_ABS_SATURATED_MV = 100_000.0
#: physical units the range bound is scaled to (units per mV); other units are read as mV
_PER_MV = {"mv": 1.0, "uv": 1e3, "\u00b5v": 1e3, "\u03bcv": 1e3, "nv": 1e6, "v": 1e-3}
MAX_STREAM_CHARS = 128
MAX_LEAD_CHARS = 16
INT16_MISSING = -32768
_INT16_CLIP = 32767
_FIXED = struct.Struct("<BBBBI")
_TYPES = {1: np.dtype("<i2"), 2: np.dtype("<f4")}
_TYPE_CODES = {"int16": 1, "float32": 2}
_JSON_KEYS = {"stream", "seq", "t0", "fs", "leads", "units", "samples"}
_HEADER_KEYS = {"stream", "seq", "t0", "fs", "leads", "units", "n", "gain", "baseline"}
_REQUIRED_HEADER_KEYS = {"stream", "seq", "t0", "fs", "leads", "n"}


class WireError(ValueError):
    """A message is not a valid chunk; ``reason`` is a short code (e.g. ``bad_fs``)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Chunk:
    """Consecutive samples of one stream.

    ``samples`` is ``(n, n_leads)`` float32 in ``units`` (NaN = missing); ``t0`` is the time of
    the first sample in seconds since the Unix epoch; ``fs`` in Hz; ``seq`` counts chunks of
    the stream from 0. ``adc`` holds the raw int16 samples of a binary int16 frame (else None);
    :attr:`clipped` counts, per lead, those at the ADC limits.

    A decoded int16 frame converts to physical units only when ``samples`` is first read, so a
    worker that needs a few of its leads converts just those (:func:`physical_leads`).
    """

    __slots__ = ("stream", "seq", "t0", "fs", "leads", "units", "adc", "_samples", "_template")

    def __init__(
        self,
        stream: str,
        seq: int,
        t0: float,
        fs: float,
        leads: list[str],
        samples: np.ndarray,
        units: str = "mV",
        adc: np.ndarray | None = None,
    ):
        self.stream, self.seq, self.t0, self.fs = stream, seq, t0, fs
        self.leads, self.units, self.adc = leads, units, adc
        self._samples: np.ndarray | None = samples
        self._template: _Template | None = None

    @classmethod
    def _of_adc(cls, stream: str, seq: int, t0: float, tpl: _Template, adc: np.ndarray) -> Chunk:
        """A chunk of int16 samples ``adc`` ``(n, leads)`` whose physical values wait for use."""
        chunk = cls(stream, seq, t0, tpl.fs, list(tpl.leads), None, tpl.units, adc)  # type: ignore[arg-type]
        chunk._template = tpl
        return chunk

    @property
    def samples(self) -> np.ndarray:
        if self._samples is None:
            self._samples = physical_leads(self.adc, self._template, slice(None))  # type: ignore[arg-type]
        return self._samples

    @property
    def clipped(self) -> np.ndarray | None:
        """Per lead, how many int16 samples sit at the ADC limits (None unless an int16 frame)."""
        return None if self.adc is None else adc_clipped(self.adc)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n, n_leads)``, without converting the samples."""
        return (self.adc if self._samples is None else self._samples).shape  # type: ignore[union-attr]

    @property
    def n(self) -> int:
        return int(self.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n / self.fs

    @property
    def conversion(self) -> object | None:
        """What the physical samples are computed from, when not yet computed (else None):
        chunks with the same ``conversion`` convert alike (:func:`physical_leads`)."""
        return self._template if self._samples is None else None

    def __repr__(self) -> str:
        return (
            f"Chunk(stream={self.stream!r}, seq={self.seq}, t0={self.t0!r}, fs={self.fs!r}, "
            f"leads={self.leads!r}, n={self.n}, units={self.units!r})"
        )


def physical_leads(adc: np.ndarray, conversion: object, sel: slice | list[int]) -> np.ndarray:
    """Physical float32 values of int16 samples ``adc`` ``(..., len(sel))``: leads ``sel`` of
    chunks whose :attr:`Chunk.conversion` is ``conversion``, stacked in any leading shape.

    The values equal ``chunk.samples[:, sel]`` (the same float32 operations on the same
    samples), in one pass for many chunks and only for the leads asked for.
    """
    tpl: _Template = conversion  # type: ignore[assignment]
    x = adc.astype(np.float32)
    if tpl.lead_base is not None:
        np.subtract(x, tpl.lead_base[sel], out=x)
    if tpl.lead_gain is not None:
        np.divide(x, tpl.lead_gain[sel], out=x)
    if adc.min() == INT16_MISSING:
        x[adc == INT16_MISSING] = np.nan
    return x


# ---------------------------------------------------------------- field validation


def _check_stream(v: object) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= MAX_STREAM_CHARS or not v.isprintable():
        raise WireError("bad_stream", f"stream must be 1-{MAX_STREAM_CHARS} printable characters")
    return v


def _check_seq(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
        raise WireError("bad_seq", f"seq must be an integer in [0, 2^63), got {v!r:.40}")
    return v


def _check_t0(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < MAX_T0:
        raise WireError("bad_t0", f"t0 must be seconds since the epoch in [0, 1e11), got {v!r:.40}")
    if not math.isfinite(v):
        raise WireError("bad_t0", "t0 must be finite")
    return float(v)


def _check_fs(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise WireError("bad_fs", f"fs must be a number, got {v!r:.40}")
    if not MIN_FS <= v <= MAX_FS:  # also rejects NaN and huge integers
        raise WireError("bad_fs", f"fs must be in [{MIN_FS:g}, {MAX_FS:g}] Hz, got {v!r:.40}")
    return float(v)


def _check_leads(v: object) -> list[str]:
    if not isinstance(v, list) or not 0 < len(v) <= MAX_LEADS:
        raise WireError("bad_leads", f"leads must be a list of 1-{MAX_LEADS} names")
    for name in v:
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= MAX_LEAD_CHARS
            or not name.isprintable()
        ):
            raise WireError(
                "bad_leads", f"lead names must be 1-{MAX_LEAD_CHARS} printable characters"
            )
    if len(set(v)) != len(v):
        raise WireError("bad_leads", f"lead names must be unique, got {v}")
    return list(v)


def _check_units(v: object) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 16 or not v.isprintable():
        raise WireError("bad_units", "units must be 1-16 printable characters, e.g. 'mV'")
    return v


def plausible_limit(units: str) -> float:
    """Largest plausible sample magnitude in ``units`` (:data:`MAX_ABS_MV` mV; other units
    than V, mV, uV and nV count as mV, as the pipeline reads them)."""
    return MAX_ABS_MV * _PER_MV.get(units.lower(), 1.0)


def _check_range(samples: np.ndarray, limit: float, units: str) -> None:
    """Reject float ``samples`` (NaN = missing) that are not finite or beyond +-``limit``."""
    hi, lo = float(samples.max()), float(samples.min())  # one fast pass each, NaN propagates
    if hi != hi or lo != lo:  # missing samples: reduce again, ignoring them
        hi, lo = (
            float(np.fmax.reduce(samples, axis=None)),
            float(np.fmin.reduce(samples, axis=None)),
        )
    if hi <= limit and lo >= -limit or hi != hi:  # in range, or every sample missing
        return
    if math.isinf(hi) or math.isinf(lo):
        raise WireError("bad_samples", "decoded samples are not finite (gain too small?)")
    worst = hi if hi > -lo else lo
    raise WireError(
        "out_of_range",
        f"sample value {worst:.4g} {units} is beyond the plausible +-{limit:g} {units}"
        " (wrong gain or units?)",
    )


def _check_vector(v: object, n_leads: int, name: str, positive: bool) -> np.ndarray:
    if not isinstance(v, list) or len(v) != n_leads:
        raise WireError(
            f"bad_{name}", f"{name} must be a list with one number per lead ({n_leads})"
        )
    for x in v:
        if type(x) not in (int, float) or not -MAX_ADC <= x <= MAX_ADC or (positive and x <= 0):
            raise WireError(
                f"bad_{name}", f"{name} must hold finite{' positive' if positive else ''} numbers"
            )
    out = np.array(v, dtype=np.float32)
    if positive and (out < np.finfo(np.float32).tiny).any():  # 0 or subnormal as float32
        raise WireError(f"bad_{name}", f"{name} must be at least {np.finfo(np.float32).tiny:.3g}")
    return out


def _check_n(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_SAMPLES:
        raise WireError("bad_n", f"sample count must be in [1, {MAX_SAMPLES}], got {v!r:.40}")
    return v


def _check_key(key: bytes | None, stream: str) -> None:
    if key is not None and key != stream.encode():
        raise WireError("key_mismatch", f"message key {key[:64]!r} is not the stream id {stream!r}")


# ---------------------------------------------------------------- decoding


def decode(value: bytes | None, key: bytes | None = None) -> Chunk:
    """Decode and validate one message value; ``key`` (if given) must equal the stream id."""
    if not value:
        raise WireError("empty", "message has no value")
    if len(value) > MAX_MESSAGE_BYTES:
        raise WireError("too_large", f"{len(value)} bytes > {MAX_MESSAGE_BYTES}")
    first = value[0]
    if first == MAGIC:
        chunk = _decode_binary(value)
    elif first in b"{ \t\r\n":
        chunk = _decode_json(value)
    else:
        raise WireError("unknown_encoding", f"first byte 0x{first:02x} is neither '{{' nor 0xEC")
    _check_key(key, chunk.stream)
    return chunk


_JSON_DECODER = json.JSONDecoder()


def _parse_json(data: bytes, what: str) -> dict:
    try:
        obj = _JSON_DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError("bad_json", f"{what} is not valid UTF-8 JSON: {str(exc)[:80]}") from None
    except RecursionError:
        raise WireError("bad_json", f"{what} nests too deeply") from None
    if not isinstance(obj, dict):
        raise WireError("bad_json", f"{what} must be a JSON object")
    return obj


def _decode_json(value: bytes) -> Chunk:
    obj = _parse_json(value, "message")
    missing = _JSON_KEYS - set(obj) - {"units"}
    if missing:
        raise WireError("missing_field", f"missing {sorted(missing)}")
    unknown = set(obj) - _JSON_KEYS
    if unknown:
        raise WireError("unknown_field", f"unknown fields {sorted(unknown)[:5]}")
    stream = _check_stream(obj["stream"])
    seq, t0, fs = _check_seq(obj["seq"]), _check_t0(obj["t0"]), _check_fs(obj["fs"])
    leads = _check_leads(obj["leads"])
    units = _check_units(obj.get("units", "mV"))
    rows = obj["samples"]
    if not isinstance(rows, list) or not 0 < len(rows) <= MAX_SAMPLES:
        raise WireError("bad_n", f"samples must be a list of 1-{MAX_SAMPLES} rows")
    if not all(isinstance(r, list) and len(r) == len(leads) for r in rows):
        raise WireError("bad_samples", f"every sample row must be a list of {len(leads)} numbers")
    ok = (int, float, type(None))
    if not all(type(x) in ok for r in rows for x in r):
        raise WireError("bad_samples", "samples must be numbers or null")
    limit = plausible_limit(units)
    try:
        samples = np.array(rows, dtype=np.float64)  # null -> NaN
    except OverflowError:
        raise WireError(
            "out_of_range", f"a sample is beyond the plausible +-{limit:g} {units}"
        ) from None
    if samples.dtype.kind != "f" or np.isinf(samples).any():
        raise WireError("bad_samples", "samples must be finite numbers or null")
    _check_range(samples, limit, units)
    return Chunk(stream, seq, t0, fs, leads, samples.astype(np.float32), units)


#: validated (leads, units, gain, baseline) of recently seen headers; these fields repeat in
#: every frame of a stream, so each distinct combination is validated once
_STATIC_CACHE: dict[tuple, tuple[list[str], str, np.ndarray, np.ndarray]] = {}
_STATIC_CACHE_SIZE = 1024


def _typed(v: object) -> tuple:
    """A hashable key of a JSON value that tells ``1``, ``1.0`` and ``true`` apart."""
    if type(v) is list:
        return tuple([(type(x), x) for x in v])
    return ((type(v), v),)


def _static_fields(hdr: dict) -> tuple[list[str], str, np.ndarray, np.ndarray]:
    """The validated leads, units, gain and baseline of a binary frame header."""
    try:
        key = (
            _typed(hdr["leads"]),
            _typed(hdr.get("units")),
            _typed(hdr.get("gain")),
            _typed(hdr.get("baseline")),
        )
        cached = _STATIC_CACHE.get(key)
    except TypeError:  # unhashable (nested) values: validate them, which rejects them
        key, cached = None, None
    if cached is not None:
        return list(cached[0]), cached[1], cached[2], cached[3]
    leads = _check_leads(hdr["leads"])
    units = _check_units(hdr.get("units", "mV"))
    n_leads = len(leads)
    gain = _check_vector(hdr.get("gain", [1.0] * n_leads), n_leads, "gain", positive=True)
    baseline = _check_vector(
        hdr.get("baseline", [0.0] * n_leads), n_leads, "baseline", positive=False
    )
    gain.flags.writeable = baseline.flags.writeable = False  # shared by every frame alike
    fields = (leads, units, gain, baseline)
    if key is not None:
        if len(_STATIC_CACHE) >= _STATIC_CACHE_SIZE:
            _STATIC_CACHE.clear()
        _STATIC_CACHE[key] = fields
    return list(leads), units, gain, baseline


@dataclass(frozen=True)
class _Template:
    """The validated fields of a header besides ``stream``, ``seq`` and ``t0``.

    ``base`` and ``gain`` are what the flattened ``(n * leads,)`` samples of a float32 frame are
    shifted and divided by: None when that is a no-op (every baseline +0, every gain 1), a
    scalar when all leads agree, else the per-lead values tiled ``n`` times (``(1, leads)`` when
    that would be long). ``lead_base`` and ``lead_gain`` are the per-lead values (None for a
    no-op) that int16 samples ``(..., leads)`` convert with (:func:`physical_leads`).
    """

    fs: float
    leads: list[str]
    units: str
    n: int
    base: np.ndarray | np.float32 | None
    gain: np.ndarray | np.float32 | None
    lead_base: np.ndarray | None
    lead_gain: np.ndarray | None
    #: plausible sample magnitude in ``units`` (:func:`plausible_limit`)
    limit: float = MAX_ABS_MV
    #: per lead, the int16 values within +-``limit`` (None: every value is)
    adc_lo: np.ndarray | None = None
    adc_hi: np.ndarray | None = None
    #: per lead, whether the ADC limits -32767 / +32767 convert within the saturated bound
    sat_lo: np.ndarray | None = None
    sat_hi: np.ndarray | None = None
    #: the narrowest of the per-lead ranges (a fast first check of every lead at once)
    adc_lo_all: int = -_INT16_CLIP
    adc_hi_all: int = _INT16_CLIP


#: a compact header that starts with stream, seq and t0 (as :func:`encode_binary` writes it);
#: group 4 is the rest, which repeats in every frame of a stream
_COMPACT_HEADER = re.compile(
    rb'\{"stream":"([^"\\]{1,512})","seq":(0|[1-9][0-9]{0,18}),'
    rb'"t0":(-?(?:0|[1-9][0-9]{0,15})(?:\.[0-9]{1,20})?(?:[eE][-+]?[0-9]{1,3})?),(.+)\}',
    re.DOTALL,
)
#: validated templates by the raw bytes of the rest of a compact header
_TEMPLATES: dict[bytes, _Template] = {}
_TEMPLATES_SIZE = 256
#: most samples (n x leads) whose per-lead gain and baseline are tiled for a template
_MAX_TILED = 16384


def _flat_operand(v: np.ndarray, n: int, neutral: float) -> np.ndarray | np.float32 | None:
    """Per-lead ``v`` as an operand of the flattened samples (see :class:`_Template`)."""
    if (v == neutral).all() and not np.signbit(v).any():
        return None
    if (v == v[0]).all() and np.signbit(v).all() == np.signbit(v).any():
        return v[0]
    if n * len(v) <= _MAX_TILED:
        return np.tile(v, n)
    return v[None, :]


def _template(
    hdr: dict, leads: list[str], units: str, gain: np.ndarray, base: np.ndarray
) -> _Template:
    """The template of a validated header ``hdr`` (see :class:`_Template`)."""
    n = hdr["n"]
    base_op, gain_op = _flat_operand(base, n, 0.0), _flat_operand(gain, n, 1.0)
    limit = plausible_limit(units)
    g, b = gain.astype(np.float64), base.astype(np.float64)
    lo = np.maximum(np.ceil(b - limit * g), -_INT16_CLIP)
    hi = np.minimum(np.floor(b + limit * g), _INT16_CLIP)
    ranged = (lo > -_INT16_CLIP).any() or (hi < _INT16_CLIP).any()
    sat = limit * (MAX_ABS_SATURATED_MV / MAX_ABS_MV)
    return _Template(
        float(hdr["fs"]),
        leads,
        units,
        n,
        base_op,
        gain_op,
        None if base_op is None else base,
        None if gain_op is None else gain,
        limit,
        lo.astype(np.int32) if ranged else None,
        hi.astype(np.int32) if ranged else None,
        np.abs((-_INT16_CLIP - b) / g) <= sat,
        np.abs((_INT16_CLIP - b) / g) <= sat,
        int(lo.max()),
        int(hi.min()),
    )


def _compact_rest_is_static(rest: bytes) -> bool:
    """Whether the rest of a compact header leaves stream, seq and t0 alone (JSON allows a
    later duplicate key to override them), so that the template holds for any values of them."""
    try:
        obj = _parse_json(b"{" + rest + b"}", "header")
    except WireError:
        return False
    return not obj.keys() & {"stream", "seq", "t0"}


def _json_number(literal: bytes) -> int | float:
    """A JSON number literal as :mod:`json` reads it: an int unless it has a fraction or exponent."""
    if b"." in literal or b"e" in literal or b"E" in literal:
        return float(literal)
    return int(literal)


def _fast_header(value: bytes, hlen: int) -> tuple[str, int, float, _Template] | None:
    """Stream, seq, t0 and template of a compact header whose rest was seen before, else None.

    Only stream, seq and t0 are checked here; they raise exactly what the full path would.
    """
    m = _COMPACT_HEADER.fullmatch(value, _FIXED.size, _FIXED.size + hlen)
    if m is None:
        return None
    tpl = _TEMPLATES.get(m[4])
    if tpl is None:
        return None
    try:
        stream = m[1].decode()
    except UnicodeDecodeError:
        return None
    if not stream.isprintable() or len(stream) > MAX_STREAM_CHARS:
        return None  # the full path tells why
    return stream, _check_seq(int(m[2])), _check_t0(_json_number(m[3])), tpl


def _full_header(value: bytes, hlen: int) -> tuple[str, int, float, _Template]:
    """Parse and validate every field of a header; remembers the template of a compact one."""
    hdr = _parse_json(value[_FIXED.size : _FIXED.size + hlen], "header")
    keys = hdr.keys()
    if not keys >= _REQUIRED_HEADER_KEYS:
        raise WireError("missing_field", f"header misses {sorted(_REQUIRED_HEADER_KEYS - keys)}")
    if not keys <= _HEADER_KEYS:
        raise WireError("unknown_field", f"unknown header fields {sorted(keys - _HEADER_KEYS)[:5]}")
    stream = _check_stream(hdr["stream"])
    seq, t0 = _check_seq(hdr["seq"]), _check_t0(hdr["t0"])
    _check_fs(hdr["fs"])
    leads, units, gain, baseline = _static_fields(hdr)
    _check_n(hdr["n"])
    tpl = _template(hdr, leads, units, gain, baseline)
    m = _COMPACT_HEADER.fullmatch(value, _FIXED.size, _FIXED.size + hlen)
    if m is not None and _compact_rest_is_static(m[4]):
        if len(_TEMPLATES) >= _TEMPLATES_SIZE:
            _TEMPLATES.clear()
        _TEMPLATES[m[4]] = tpl
    return stream, seq, t0, tpl


def _decode_binary(value: bytes) -> Chunk:
    if len(value) < _FIXED.size:
        raise WireError(
            "truncated", f"{len(value)} bytes is shorter than the {_FIXED.size}-byte prefix"
        )
    _, version, type_code, _reserved, hlen = _FIXED.unpack_from(value)
    if version != VERSION:
        raise WireError(
            "bad_version", f"binary frame version {version}, this reader knows {VERSION}"
        )
    if type_code not in _TYPES:
        raise WireError("bad_sample_type", f"sample type {type_code} (1 = int16, 2 = float32)")
    if not 0 < hlen <= MAX_HEADER_BYTES:
        raise WireError("bad_header_size", f"header length {hlen} not in [1, {MAX_HEADER_BYTES}]")
    if len(value) < _FIXED.size + hlen:
        raise WireError("truncated", "frame ends inside its header")
    stream, seq, t0, tpl = _fast_header(value, hlen) or _full_header(value, hlen)
    n, n_leads = tpl.n, len(tpl.leads)
    dtype = _TYPES[type_code]
    body = len(value) - _FIXED.size - hlen
    if body != n * n_leads * dtype.itemsize:
        raise WireError(
            "bad_length",
            f"{body} sample bytes, header says {n} x {n_leads} x {dtype.itemsize} = "
            f"{n * n_leads * dtype.itemsize}",
        )
    raw = np.frombuffer(value, dtype=dtype, offset=_FIXED.size + hlen)
    if type_code == 1:  # converted when used (see Chunk)
        adc = raw.reshape(n, n_leads)
        _check_adc(adc, tpl)
        return Chunk._of_adc(stream, seq, t0, tpl, adc)
    samples = _physical_float32(raw, tpl)
    _check_range(samples, tpl.limit, tpl.units)
    return Chunk(stream, seq, t0, tpl.fs, list(tpl.leads), samples.reshape(n, n_leads), tpl.units)


def _check_adc(adc: np.ndarray, tpl: _Template) -> None:
    """Reject int16 samples ``adc`` ``(n, leads)`` whose physical values are beyond
    +-``tpl.limit`` (missing samples aside; samples at the ADC limits +-32767 only when they
    convert beyond the saturated bound), without converting the frame."""
    if tpl.adc_lo is None:
        return
    # one flat pass each (a per-lead reduction costs ~10x more): every lead within the
    # narrowest range is the common case
    if int(adc.max()) <= tpl.adc_hi_all and int(adc.min()) >= tpl.adc_lo_all:
        return
    x = adc.astype(np.int32)
    bad = ((x > tpl.adc_hi) | (x < tpl.adc_lo)) & (x != INT16_MISSING)
    bad &= ~(((x == _INT16_CLIP) & tpl.sat_hi) | ((x == -_INT16_CLIP) & tpl.sat_lo))
    if bad.any():
        lead = int(np.flatnonzero(bad.any(axis=0))[0])
        raw = int(x[bad[:, lead], lead][0])
        base = 0.0 if tpl.lead_base is None else float(tpl.lead_base[lead])
        gain = 1.0 if tpl.lead_gain is None else float(tpl.lead_gain[lead])
        raise WireError(
            "out_of_range",
            f"lead {tpl.leads[lead]}: ADC value {raw} is {(raw - base) / gain:.4g} {tpl.units} "
            f"with gain {gain:g} and baseline {base:g}, beyond the plausible +-{tpl.limit:g} "
            f"{tpl.units} (wrong gain or baseline?)",
        )


def _physical_float32(raw: np.ndarray, tpl: _Template) -> np.ndarray:
    """Flat float32 samples of a float32 frame's flat ``raw``: ``(raw - baseline) / gain``
    (int16 frames convert in :func:`physical_leads`, when used).

    The samples are sample-major, so the per-lead operands are tiled (or scalars) to keep every
    operation one contiguous pass rather than a broadcast over rows of ``leads`` values.
    """
    samples = raw.astype(np.float32)
    if np.isinf(samples).any():
        raise WireError("bad_samples", "float32 samples must be finite or NaN")
    base, gain = tpl.base, tpl.gain
    if base is not None:
        samples = _apply(np.subtract, samples, base)
    if gain is not None:
        samples = _apply(np.divide, samples, gain)
    return samples


def _apply(op: np.ufunc, samples: np.ndarray, v: np.ndarray | np.float32) -> np.ndarray:
    """``op(samples, v)`` in place; ``v`` is ``(1, leads)`` when it was too long to tile."""
    if np.ndim(v) == 2:
        rows = samples.reshape(-1, v.shape[1])
        op(rows, v, out=rows)
        return samples
    return op(samples, v, out=samples)


def adc_clipped(adc: np.ndarray) -> np.ndarray:
    """Count int16 samples at the ADC limits (+-32767) along the sample axis ``-2``."""
    return np.count_nonzero((adc >= _INT16_CLIP) | (adc == -_INT16_CLIP), axis=-2)


# ---------------------------------------------------------------- encoding


def encode_json(chunk: Chunk) -> bytes:
    """The JSON encoding of ``chunk`` (NaN samples become null)."""
    rows = [[None if math.isnan(x) else round(float(x), 6) for x in row] for row in chunk.samples]
    obj = {
        "stream": chunk.stream,
        "seq": chunk.seq,
        "t0": chunk.t0,
        "fs": chunk.fs,
        "leads": list(chunk.leads),
        "units": chunk.units,
        "samples": rows,
    }
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_binary(
    chunk: Chunk,
    sample_type: str = "int16",
    gain: float | list[float] = 200.0,
    baseline: float | list[float] = 0.0,
) -> bytes:
    """The binary frame of ``chunk``; int16 stores ``round(x * gain + baseline)`` per lead.

    ``gain`` is ADC units per physical unit (200 per mV, as in MIT-BIH); int16 values are
    clipped to +-32767 and NaN is stored as -32768 (missing).
    """
    if sample_type not in _TYPE_CODES:
        raise ValueError(f"sample_type must be 'int16' or 'float32', not {sample_type!r}")
    n, n_leads = chunk.samples.shape
    hdr: dict = {
        "stream": chunk.stream,
        "seq": int(chunk.seq),
        "t0": float(chunk.t0),
        "fs": float(chunk.fs),
        "leads": list(chunk.leads),
        "units": chunk.units,
        "n": int(n),
    }
    x = np.asarray(chunk.samples, dtype=np.float32)
    if sample_type == "int16":
        g = np.broadcast_to(np.asarray(gain, np.float64), (n_leads,)).astype(np.float64)
        b = np.broadcast_to(np.asarray(baseline, np.float64), (n_leads,)).astype(np.float64)
        hdr["gain"], hdr["baseline"] = g.tolist(), b.tolist()
        nan = np.isnan(x)
        adc = np.clip(np.rint(np.nan_to_num(x) * g + b), -_INT16_CLIP, _INT16_CLIP).astype("<i2")
        adc[nan] = INT16_MISSING
        body = adc.tobytes()
    else:
        body = x.astype("<f4").tobytes()
    header = json.dumps(hdr, separators=(",", ":")).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return _FIXED.pack(MAGIC, VERSION, _TYPE_CODES[sample_type], 0, len(header)) + header + body
