"""Leaf validators for params.yaml, torch-free and importable by any module: each takes (key, value)
and returns the normalised value or raises ConfigError naming the key, the bad value and what is valid.
`section` checks a mapping against a schema {name: validator | (validator, default) | sub-schema}."""
import difflib
import math
import re

from pmnist.errors import ConfigError

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


def fail(key, msg):
    raise ConfigError(f"params.yaml: {key}: {msg}")


# ---- leaf validators: (key, value) -> normalised value -------------------------------------------
def positive_int(key, v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        fail(key, f"must be a positive integer, got {v!r}")
    return v


def non_negative_int(key, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        fail(key, f"must be an integer >= 0, got {v!r}")
    return v


def positive_float(key, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        fail(key, f"must be a positive number, got {v!r}")
    return float(v)


def unit_interval(key, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        fail(key, f"must be a number in [0, 1), got {v!r}")
    return float(v)


def non_negative_float(key, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        fail(key, f"must be a number >= 0, got {v!r}")
    return float(v)


def boolean(key, v):
    if not isinstance(v, bool):
        fail(key, f"must be true or false, got {v!r}")
    return v


def string(key, v):
    if not isinstance(v, str) or not v:
        fail(key, f"must be a non-empty string, got {v!r}")
    return v


def device(key, v):
    if not isinstance(v, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
        fail(key, f"must be auto, cpu, cuda or cuda:<index>, got {v!r}")
    return v


def one_of(*choices):
    def check(key, v):
        if v not in choices:
            fail(key, f"must be one of {', '.join(map(str, choices))}; got {v!r}")
        return v
    return check


def list_of(item, min_len=1):
    def check(key, v):
        if not isinstance(v, list) or len(v) < min_len:
            fail(key, f"must be a list of at least {min_len} item(s), got {v!r}")
        return [item(f"{key}[{i}]", x) for i, x in enumerate(v)]
    return check


def md5_hex(key, v):
    if not isinstance(v, str) or len(v) != 32 or any(c not in "0123456789abcdef" for c in v):
        fail(key, f"must be a 32-character lowercase hex MD5, got {v!r}")
    return v


def run_pair(key, v):
    if not isinstance(v, list) or len(v) != 2 or not all(isinstance(x, str) and x for x in v):
        fail(key, f"must be a [run, control] pair of run names, got {v!r}")
    return v


def unknown(key, name, valid):
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    fail(f"{key}.{name}" if key else name, f"unknown key{hint} Valid keys: {', '.join(valid)}")


def like_default(key, v, default):
    """A registry argument given by value must have its default's type (an int for an int, a number for
    a float, a list of as many numbers for a list); pmnist/registry.py."""
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    if isinstance(default, bool):
        return boolean(key, v)
    if isinstance(default, str) and not isinstance(v, str):
        fail(key, f"must be a string like the default {default!r}, got {v!r}")
    if isinstance(default, int):
        if not isinstance(v, int) or isinstance(v, bool):
            fail(key, f"must be an integer like the default {default!r}, got {v!r}")
    elif number(default) and (not number(v) or not math.isfinite(v)):
        fail(key, f"must be a number like the default {default!r}, got {v!r}")
    if isinstance(default, list) and (not isinstance(v, list) or len(v) != len(default) or not all(map(number, v))):
        fail(key, f"must be a list of {len(default)} numbers like the default {default!r}, got {v!r}")
    return v


def section(key, raw, schema):
    if not isinstance(raw, dict):
        fail(key, f"must be a mapping, got {raw!r}")
    for name in raw:
        if name not in schema:
            unknown(key, name, schema)
    out = {}
    for name, spec in schema.items():
        sub = f"{key}.{name}"
        if isinstance(spec, dict):
            if name not in raw:
                fail(sub, "missing")
            out[name] = section(sub, raw[name], spec)
            continue
        check, default = spec if isinstance(spec, tuple) else (spec, ...)
        if name not in raw or raw[name] is None:
            if default is ...:
                fail(sub, "missing")
            out[name] = default
        elif check is dict:
            if not isinstance(raw[name], dict):
                fail(sub, f"must be a mapping, got {raw[name]!r}")
            out[name] = raw[name]
        else:
            out[name] = check(sub, raw[name])
    return out


def name(key, v):
    """A name that becomes part of a path or a command (a run, a model): letters, digits, _ and - only."""
    if not isinstance(v, str) or not NAME_PATTERN.fullmatch(v):
        fail(key, f"{v!r} is not a valid name: use only letters, digits, '_' and '-' (it becomes a file "
                  f"name under results/ and a stage name)")
    return v
