"""Wire format: round trips, and every malformed input rejected with a reason (never a crash)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecgstream.streaming import wire
from ecgstream.streaming.wire import (
    MAX_HEADER_BYTES,
    MAX_SAMPLES,
    Chunk,
    WireError,
    decode,
    encode_binary,
    encode_json,
    physical_leads,
)


def _chunk(n=360, leads=("MLII", "V1"), seed=0) -> Chunk:
    x = np.random.default_rng(seed).normal(0, 0.5, size=(n, len(leads))).astype(np.float32)
    return Chunk("bed-7", 12, 1_700_000_000.25, 360.0, list(leads), x, "mV")


def test_json_round_trip_keeps_values_and_missing_samples():
    c = _chunk()
    c.samples[5, 1] = np.nan
    d = decode(encode_json(c), b"bed-7")
    assert (d.stream, d.seq, d.t0, d.fs, d.leads, d.units) == (
        c.stream,
        c.seq,
        c.t0,
        c.fs,
        c.leads,
        c.units,
    )
    assert np.isnan(d.samples[5, 1])
    np.testing.assert_allclose(np.nan_to_num(d.samples), np.nan_to_num(c.samples), atol=1e-6)


@pytest.mark.parametrize("sample_type,tol", [("int16", 0.5 / 200 + 1e-6), ("float32", 0.0)])
def test_binary_round_trip(sample_type, tol):
    c = _chunk()
    c.samples[7, 0] = np.nan
    d = decode(encode_binary(c, sample_type=sample_type))
    assert d.samples.dtype == np.float32 and d.samples.shape == c.samples.shape
    assert np.isnan(d.samples[7, 0])
    np.testing.assert_allclose(np.nan_to_num(d.samples), np.nan_to_num(c.samples), atol=tol)
    if sample_type == "int16":
        assert d.clipped.tolist() == [0, 0]


def test_int16_clipping_is_counted_per_lead():
    c = _chunk()
    c.samples[:20, 1] = 500.0  # far beyond +-163 mV at gain 200
    assert decode(encode_binary(c)).clipped.tolist() == [0, 20]


def _adc(rng, n: int, gain: list[float], baseline: list[float]) -> np.ndarray:
    """``(n, 3)`` int16 samples of plausible values (within +-100 mV) for ``gain`` and
    ``baseline``, with a missing sample and one at each ADC limit."""
    phys = rng.uniform(-99, 99, (n, 3))
    raw = np.clip(np.rint(phys * gain + np.array(baseline)), -32767, 32767).astype("<i2")
    raw[0, 0], raw[1, 1], raw[2, 2] = -32768, 32767, -32767
    return raw


def _binary(header: dict, body: bytes, type_code=1, version=1, hlen=None) -> bytes:
    h = json.dumps(header).encode()
    return (
        struct.pack("<BBBBI", 0xEC, version, type_code, 0, len(h) if hlen is None else hlen)
        + h
        + body
    )


GOOD = {"stream": "s", "seq": 0, "t0": 1.0, "fs": 250.0, "leads": ["I"], "n": 2}


@pytest.mark.parametrize(
    "value,key,reason",
    [
        (b"", None, "empty"),
        (b"\x00abc", None, "unknown_encoding"),
        (b"{not json", None, "bad_json"),
        (b" [1, 2]", None, "bad_json"),
        (b"[1, 2]", None, "unknown_encoding"),
        (json.dumps({"stream": "s"}).encode(), None, "missing_field"),
        (encode_json(_chunk()), b"other", "key_mismatch"),
        (_binary(GOOD, b"\x00" * 4, version=9), None, "bad_version"),
        (_binary(GOOD, b"\x00" * 4, type_code=7), None, "bad_sample_type"),
        (_binary(GOOD, b"\x00" * 4, hlen=MAX_HEADER_BYTES + 1), None, "bad_header_size"),
        (_binary(GOOD, b"\x00" * 3), None, "bad_length"),
        (_binary({**GOOD, "n": MAX_SAMPLES + 1}, b""), None, "bad_n"),
        (_binary({**GOOD, "n": 10**12}, b""), None, "bad_n"),
        (_binary({**GOOD, "fs": -5}, b"\x00" * 4), None, "bad_fs"),
        (_binary({**GOOD, "fs": 1e9}, b"\x00" * 4), None, "bad_fs"),
        (_binary({**GOOD, "seq": -1}, b"\x00" * 4), None, "bad_seq"),
        (_binary({**GOOD, "seq": True}, b"\x00" * 4), None, "bad_seq"),
        (_binary({**GOOD, "t0": "now"}, b"\x00" * 4), None, "bad_t0"),
        (_binary({**GOOD, "leads": ["I"] * 17, "n": 1}, b"\x00" * 34), None, "bad_leads"),
        (_binary({**GOOD, "leads": ["I", "I"], "n": 1}, b"\x00" * 4), None, "bad_leads"),
        (_binary({**GOOD, "stream": "x" * 500}, b"\x00" * 4), None, "bad_stream"),
        (_binary({**GOOD, "gain": [0.0]}, b"\x00" * 4), None, "bad_gain"),
        (_binary({**GOOD, "baseline": [10**400]}, b"\x00" * 4), None, "bad_baseline"),
        (_binary({**GOOD, "fs": 10**400}, b"\x00" * 4), None, "bad_fs"),
        (_binary({**GOOD, "t0": 10**400}, b"\x00" * 4), None, "bad_t0"),
        (_binary({**GOOD, "extra": 1}, b"\x00" * 4), None, "unknown_field"),
        (
            _binary(GOOD, b"\x00" * 8, type_code=2)[:-8] + struct.pack("<2f", np.inf, 0),
            None,
            "bad_samples",
        ),
        (
            json.dumps(
                {"stream": "s", "seq": 0, "t0": 1, "fs": 1, "leads": ["I"], "samples": [["1"]]}
            ).encode(),
            None,
            "bad_samples",
        ),
        (
            json.dumps(
                {"stream": "s", "seq": 0, "t0": 1, "fs": 1, "leads": ["I"], "samples": [[1, 2]]}
            ).encode(),
            None,
            "bad_samples",
        ),
        (b"{" + b" " * (5 * 1024 * 1024) + b"}", None, "too_large"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(value, key, reason):
    with pytest.raises(WireError) as err:
        decode(value, key)
    assert err.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(data):
    for value in (data, b"\xec\x01" + data, b"{" + data):
        try:
            chunk = decode(value)
        except WireError:
            continue
        assert chunk.samples.ndim == 2


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 200), st.integers(0, 20))
def test_truncated_frames_are_rejected(cut, flip):
    value = bytearray(encode_binary(_chunk(n=10)))
    value = value[: len(value) - 1 - cut]
    with pytest.raises(WireError):
        decode(bytes(value))


def test_header_fields_validated_once_per_stream_still_reject_lookalikes():
    """Leads, gain and baseline repeat in every frame and are validated once per distinct value;
    a later frame whose values compare equal but have other JSON types is still rejected."""
    body = np.zeros((4, 1), "<i2").tobytes()
    good = {"stream": "s", "seq": 0, "t0": 1.0, "fs": 100.0, "leads": ["II"], "n": 4,
            "gain": [200], "baseline": [0]}  # fmt: skip
    first = decode(_binary(good, body))
    assert first.leads == ["II"]
    first.leads.append("V1")  # a consumer changing its chunk changes no other chunk
    assert decode(_binary({**good, "seq": 1}, body)).leads == ["II"]
    for field, value, reason in [
        ("gain", [True], "bad_gain"),  # true == 1 in Python, not a number on the wire
        ("baseline", [False], "bad_baseline"),
        ("gain", [[200]], "bad_gain"),  # unhashable
        ("leads", [["II"]], "bad_leads"),
    ]:
        with pytest.raises(WireError) as err:
            decode(_binary({**good, field: value}, body))
        assert err.value.reason == reason
    gain = wire._static_fields(json.loads(json.dumps(good)))[2]
    with pytest.raises(ValueError):  # shared by every frame of the stream: read-only
        gain[0] = 1.0


def test_header_cache_is_bounded_under_hostile_headers():
    body = np.zeros((2, 1), "<i2").tobytes()
    for i in range(3 * wire._STATIC_CACHE_SIZE):
        hdr = {"stream": "s", "seq": i, "t0": 1.0, "fs": 100.0, "leads": [f"L{i}"], "n": 2}
        decode(_binary(hdr, body))
        assert len(wire._STATIC_CACHE) <= wire._STATIC_CACHE_SIZE


def _frame(header: bytes, body: bytes, type_code=1) -> bytes:
    return struct.pack("<BBBBI", 0xEC, 1, type_code, 0, len(header)) + header + body


def _outcome(value: bytes):
    """What decoding ``value`` gives: the chunk's fields and sample bytes, or the error."""
    try:
        c = decode(value)
    except WireError as exc:
        return ("error", exc.reason, exc.detail)
    return (c.stream, type(c.seq), c.seq, type(c.t0), c.t0, c.fs, c.leads, c.units,
            c.samples.tobytes(), None if c.adc is None else c.adc.tobytes())  # fmt: skip


def _cold_and_warm(value: bytes, warm_with: bytes):
    """``value`` decoded with no cached header template, and after ``warm_with`` (a valid
    frame with the same rest of the header) put one in the cache."""
    wire._TEMPLATES.clear()
    cold = _outcome(value)
    wire._TEMPLATES.clear()
    decode(warm_with)
    assert len(wire._TEMPLATES) == 1
    return cold, _outcome(value)


COMPACT = (
    b'{"stream":"bed-1","seq":3,"t0":1700000000.5,"fs":250.0,"leads":["I","II"],"units":"mV",'
    b'"n":2,"gain":[200.0,100.0],"baseline":[0.0,-3.0]}'
)
BODY = np.array([[1, -2], [-32768, 40]], "<i2").tobytes()


@pytest.mark.parametrize(
    "field,literal",
    [
        *[("seq", v) for v in (b"4", b"0", b"9223372036854775807", b"9223372036854775808",
                               b"-1", b"01", b"1.0", b"true", b"1e3")],
        *[("t0", v) for v in (b"1700000000", b"1.5", b"-0.0", b"-0", b"-1.0", b"1e10",
                              b"1E+11", b"99999999999.9", b"1e999", b"NaN", b"Infinity",
                              b"1.", b".5", b'"1"', b"0.1e-400")],
        *[("stream", v) for v in (b'"b"', b'"x"', b'"' + b"y" * 128 + b'"',
                                  b'"' + b"y" * 129 + b'"', b'""', b'"a\\u0062"', b'"a\x07"',
                                  b'"a\x7f"', b'"\xc3\xa9"', b'"\xc3"', b'"a b"', b"7")],
    ],
)  # fmt: skip
def test_a_cached_header_template_still_checks_stream_seq_and_t0(field, literal):
    """Frames whose header repeats a cached rest are checked field by field as the full path
    checks them: the same chunk, or the same error reason and detail."""
    old = {"seq": b'"seq":3', "t0": b'"t0":1700000000.5', "stream": b'"stream":"bed-1"'}[field]
    header = COMPACT.replace(old, f'"{field}":'.encode() + literal)
    cold, warm = _cold_and_warm(_frame(header, BODY), _frame(COMPACT, BODY))
    assert warm == cold


def test_frames_that_repeat_a_cached_rest_skip_the_json_parser(monkeypatch):
    wire._TEMPLATES.clear()
    first = decode(_frame(COMPACT, BODY), b"bed-1")
    monkeypatch.setattr(wire, "_parse_json", None)  # calling it now would fail
    header = COMPACT.replace(b'"seq":3', b'"seq":4').replace(b"bed-1", b"bed-2")
    c = decode(_frame(header, BODY), b"bed-2")
    assert (c.stream, c.seq, c.t0, c.leads) == ("bed-2", 4, first.t0, ["I", "II"])
    assert c.samples.tobytes() == first.samples.tobytes()
    with pytest.raises(WireError) as err:
        decode(_frame(header, BODY), b"bed-1")
    assert err.value.reason == "key_mismatch"


def test_a_cached_header_template_still_checks_the_body_and_the_rest():
    good = _frame(COMPACT, BODY)
    cases = [
        _frame(COMPACT, BODY[:-2]),  # bad_length
        _frame(COMPACT, BODY, type_code=2),  # float32 samples: other length
        _frame(COMPACT.replace(b'"fs":250.0', b'"fs":0.0'), BODY),  # another rest
        _frame(COMPACT.replace(b"[200.0,100.0]", b"[200.0,true]"), BODY),
        _frame(COMPACT[:-1] + b',"seq":9}', BODY),  # a later duplicate key wins in JSON
        _frame(COMPACT[:-1] + b',"s\\u0065q":9}', BODY),
        _frame(COMPACT[:-1] + b',"stream":"other"}', BODY),
        _frame(COMPACT.replace(b',"seq"', b', "seq"'), BODY),  # not compact: full path
    ]
    for value in cases:
        cold, warm = _cold_and_warm(value, good)
        assert warm == cold
    overriding = _frame(COMPACT[:-1] + b',"seq":9}', BODY)
    assert decode(overriding).seq == decode(overriding).seq == 9  # never cached with seq 3
    assert decode(good).seq == 3


def test_cached_templates_scale_like_the_full_path():
    """Per-lead gain and baseline, uniform ones, -0 and long frames give the same samples as
    ``(raw - baseline) / gain`` computed per lead."""
    rng = np.random.default_rng(0)
    for n, gain, baseline in [
        (50, [200.0, 100.0, 7.5], [0.0, -3.0, 300.0]),
        (50, [200.0] * 3, [0.0] * 3),
        (50, [1.0] * 3, [-0.0, 0.0, -0.0]),
        (50, [1.0] * 3, [-0.0] * 3),
        (8000, [200.0, 100.0, 7.5], [0.5, -3.0, 2.0]),  # too long to tile
    ]:
        raw = _adc(rng, n, gain, baseline)
        hdr = {"stream": "s", "seq": 0, "t0": 1.0, "fs": 250.0, "leads": ["I", "II", "V1"],
               "n": n, "gain": gain, "baseline": baseline}  # fmt: skip
        value = _frame(json.dumps(hdr, separators=(",", ":")).encode(), raw.tobytes())
        expected = np.subtract(raw, np.array(baseline, np.float32), dtype=np.float32)
        expected /= np.array(gain, np.float32)
        expected[raw == -32768] = np.nan
        for _ in range(2):  # full path, then cached
            got = decode(value).samples
            assert got.tobytes() == expected.tobytes()
        raw32 = rng.normal(0, 20, (n, 3)).astype("<f4")
        raw32[3, 1] = np.nan
        value = _frame(json.dumps(hdr, separators=(",", ":")).encode(), raw32.tobytes(), 2)
        expected = (raw32 - np.array(baseline, np.float32)) / np.array(gain, np.float32)
        for _ in range(2):
            assert decode(value).samples.tobytes() == expected.tobytes()


def test_some_leads_of_many_int16_frames_convert_as_each_frame_alone():
    """The worker converts only the model's leads of a poll's frames, stacked: the values must
    be those of ``chunk.samples`` bit for bit (gains, baselines, -0, missing samples)."""
    rng = np.random.default_rng(1)
    for gain, baseline in [
        ([200.0, 100.0, 7.5], [0.0, -3.0, 300.0]),
        ([200.0] * 3, [0.0] * 3),
        ([1.0] * 3, [-0.0, 0.0, -0.0]),
        ([1.0] * 3, [0.0] * 3),
    ]:
        hdr = {"stream": "s", "seq": 0, "t0": 1.0, "fs": 250.0, "leads": ["I", "II", "V1"],
               "n": 50, "gain": gain, "baseline": baseline}  # fmt: skip
        head = json.dumps(hdr, separators=(",", ":")).encode()
        raws = [_adc(rng, 50, gain, baseline) for _ in range(4)]
        raws[1][[0, 7], 1] = -32768  # missing samples
        chunks = [decode(_frame(head, raw.tobytes())) for raw in raws]
        assert chunks[0].conversion is not None
        assert all(c.conversion is chunks[0].conversion for c in chunks)  # one cached template
        for sel in (slice(1, 2), [2, 0], [1], slice(0, 3)):
            adc = np.stack([c.adc[:, sel] for c in chunks])
            got = physical_leads(adc, chunks[0].conversion, sel)
            alone = [decode(_frame(head, raw.tobytes())).samples[:, sel] for raw in raws]
            assert got.dtype == np.float32 and got.tobytes() == np.stack(alone).tobytes()
            # and both are (raw - baseline) / gain per lead, computed here independently
            expected = np.subtract(np.stack(raws), np.array(baseline, np.float32), dtype=np.float32)
            expected /= np.array(gain, np.float32)
            expected[np.stack(raws) == -32768] = np.nan
            assert got.tobytes() == expected[:, :, sel].tobytes()
        assert chunks[0].samples is not None and chunks[0].conversion is None  # now converted


def test_header_template_cache_is_bounded():
    body = np.zeros((2, 1), "<i2").tobytes()
    for i in range(3 * wire._TEMPLATES_SIZE):
        hdr = {"stream": "s", "seq": 0, "t0": 1.0, "fs": 100.0, "leads": [f"L{i}"], "n": 2}
        decode(_frame(json.dumps(hdr, separators=(",", ":")).encode(), body))
        assert 0 < len(wire._TEMPLATES) <= wire._TEMPLATES_SIZE


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["seq", "t0"]), st.text("0123456789.eE+-", min_size=1, max_size=24))
def test_any_seq_or_t0_literal_decodes_alike_with_a_cached_template(field, literal):
    old = {"seq": b'"seq":3', "t0": b'"t0":1700000000.5'}[field]
    header = COMPACT.replace(old, f'"{field}":{literal}'.encode())
    cold, warm = _cold_and_warm(_frame(header, BODY), _frame(COMPACT, BODY))
    assert warm == cold


# ---------------------------------------------------------------- plausible values (issue 24)


def _frame_of(samples: np.ndarray, type_code: int, gain: float, baseline: float = 0.0) -> bytes:
    n, leads = samples.shape
    hdr = {"stream": "g", "seq": 0, "t0": 1.7e9, "fs": 250.0, "leads": ["MLII", "V1"][:leads],
           "n": n, "gain": [gain] * leads, "baseline": [baseline] * leads}  # fmt: skip
    dtype = "<i2" if type_code == 1 else "<f4"
    return _frame(json.dumps(hdr).encode(), samples.astype(dtype).tobytes(), type_code)


@pytest.mark.parametrize(
    "type_code, gain, reason",
    [
        (1, 1e-40, "bad_gain"),  # subnormal as float32: decoded to inf before
        (2, 1e-45, "bad_gain"),
        (1, 1e-30, "out_of_range"),  # finite garbage (1e32 mV) before
        (2, 1e-30, "out_of_range"),
        (2, 1e-37, "bad_samples"),  # 200 / 1e-37 overflows float32: not finite
        (1, 1.0, "out_of_range"),  # 200 ADC units at gain 1 is 200 mV
    ],
)
def test_tiny_gains_and_implausible_values_are_rejected(type_code, gain, reason):
    x = np.full((250, 1), 200.0)
    x[::50] = -200.0
    with pytest.raises(WireError) as err:
        decode(_frame_of(x, type_code, gain))
    assert err.value.reason == reason
    assert "gain" in err.value.detail or "finite" in err.value.detail


def test_values_within_the_plausible_range_pass_in_every_encoding():
    x = np.array([[99.0, -99.0], [0.5, -0.5], [np.nan, 1.0]], np.float32)
    for value in (encode_json(Chunk("g", 0, 1.7e9, 250.0, ["MLII", "V1"], x)),
                  encode_binary(Chunk("g", 0, 1.7e9, 250.0, ["MLII", "V1"], x)),
                  encode_binary(Chunk("g", 0, 1.7e9, 250.0, ["MLII", "V1"], x), "float32")):  # fmt: skip
        got = decode(value).samples
        np.testing.assert_allclose(got, x, atol=0.01)
    # float32 volts with a gain converting them to mV: 0.05 V / 1e-3 = 50 mV
    assert decode(_frame_of(np.full((3, 1), 0.05), 2, 1e-3)).samples.max() == pytest.approx(50)


def test_the_range_is_in_the_chunks_units():
    x = np.full((4, 1), 150.0, np.float32)
    with pytest.raises(WireError, match="150 mV is beyond the plausible"):
        decode(encode_json(Chunk("g", 0, 1.7e9, 250.0, ["MLII"], x)))
    with pytest.raises(WireError) as err:
        decode(encode_json(Chunk("g", 0, 1.7e9, 250.0, ["MLII"], x * 1e3, units="uV")))
    assert err.value.reason == "out_of_range"
    assert decode(encode_json(Chunk("g", 0, 1.7e9, 250.0, ["MLII"], x, units="uV"))).n == 4


def test_int16_samples_at_the_adc_limits_mark_saturation_not_implausible_values():
    x = np.zeros((100, 1), np.float32)
    x[:10] = 1000.0  # clipped to +32767 at gain 200 (163.8 mV): saturation
    chunk = decode(encode_binary(Chunk("g", 0, 1.7e9, 250.0, ["MLII"], x)))
    assert chunk.clipped.tolist() == [10]
    # ... unless the ADC limit itself converts beyond 100 V (a gain far too small)
    raw = np.zeros((100, 1))
    raw[:10] = 32767
    with pytest.raises(WireError) as err:
        decode(_frame_of(raw, 1, 0.1))
    assert err.value.reason == "out_of_range"
