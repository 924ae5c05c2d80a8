"""A compiled Avro encoder for flat records: the same bytes as fastavro, in about half the time.

The device uplink encodes every Decision and LocalSummary it sends (120,000 a second at
10,000 UEs). fastavro's ``schemaless_writer`` dispatches on the schema for every field of
every record: 18.7 µs for a Decision (24 parameters in its map), 12 µs for a LocalSummary.
:func:`compile_encoder` writes one Python function per schema instead (like the codec's
compiled range predicate), with the map keys' encodings cached, for records whose fields
are scalars, enums, ``["null", scalar]`` unions and maps of scalars. Anything else, or a
value of another Python type than the field's, raises :class:`NotFlat`, and the caller
encodes that record the usual way (:meth:`~tiertwin.schemas.codec.SchemaRegistry.encode`),
which also gives the precise error. Validation is the caller's (``Schema.validate``).

>>> from tiertwin.schemas import SchemaRegistry
>>> from tiertwin.schemas.examples import example
>>> registry = SchemaRegistry.default()
>>> schema = registry.current("Decision")
>>> encode = compile_encoder(schema.raw, schema.header)
>>> record = example("Decision")
>>> encode(record) == registry.encode("Decision", record)
True
"""

from __future__ import annotations

import struct
from typing import Any, Callable


class NotFlat(Exception):
    """This record (or schema) is not for the compiled encoder: encode it with fastavro."""


_SCALARS = {"string", "int", "long", "float", "double", "boolean"}
_CHUNK = 1 << 14      # varints are built 14 bits (two 7-bit groups) at a time from tables


def _uvarint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_LAST = [_uvarint_slow(c) for c in range(_CHUNK)]                              # the final 1-2 bytes
_MORE = [bytes(((c & 0x7F) | 0x80, (c >> 7) | 0x80)) for c in range(_CHUNK)]   # 2 bytes, more follow


def _long(n: int, _last=_LAST, _more=_MORE) -> bytes:
    """Zigzag varint of an Avro int/long (a ns timestamp: 5 table look-ups, no loop)."""
    if not -(1 << 63) <= n < (1 << 63):
        raise NotFlat("out of the long range")
    n = (n << 1) ^ (n >> 63)
    if n < 16384:
        return _last[n]
    if n < 268435456:    # 2 ** 28
        return _more[n & 16383] + _last[n >> 14]
    if n < 4398046511104:    # 2 ** 42: ms timestamps
        return _more[n & 16383] + _more[(n >> 14) & 16383] + _last[n >> 28]
    parts = [_more[n & 16383], _more[(n >> 14) & 16383], _more[(n >> 28) & 16383]]
    n >>= 42
    while n >= 16384:
        parts.append(_more[n & 16383])
        n >>= 14
    parts.append(_last[n])
    return b"".join(parts)


_STRING_CACHE = 1024     # per string field: the encodings of its first distinct values (names, enums-in-all-but-name)


def _string(v: Any, cache: dict, prefix: bytes, limit: int) -> bytes:
    """``prefix`` + the Avro encoding of the string ``v`` (at most ``limit`` characters), remembered in ``cache``
    while it has room."""
    if type(v) is not str or len(v) > limit:
        raise NotFlat("not a str, or too long")
    b = v.encode()
    e = prefix + _long(len(b)) + b
    if len(cache) < _STRING_CACHE:
        cache[v] = e
    return e


def _int_code(var: str, indent: str) -> list[str]:
    return [f"{indent}if type({var}) is not int: raise NotFlat",
            f"{indent}a(_LAST[{var} << 1] if 0 <= {var} < 8192 else _long({var}))"]


def _scalar_code(kind: str, var: str, indent: str, namespace: dict, i: int, prefix: bytes = b"",
                 max_length: int = 1 << 62) -> list[str]:
    """Lines appending the encoding of the scalar in ``var`` to ``parts`` (``a``), after ``prefix``."""
    if kind == "string":
        namespace[f"_S{i}"], namespace[f"_SP{i}"] = {}, prefix
        return [f"{indent}e = _S{i}.get({var})",
                f"{indent}a(e if e is not None else _string({var}, _S{i}, _SP{i}, {max_length}))"]
    lines = [f"{indent}a({prefix!r})"] if prefix else []
    if kind in ("int", "long"):
        return lines + _int_code(var, indent)
    if kind == "float":
        return lines + [f"{indent}if type({var}) is not float and type({var}) is not int: raise NotFlat",
                        f"{indent}a(_pack_f({var}))"]
    if kind == "double":
        return lines + [f"{indent}if type({var}) is not float and type({var}) is not int: raise NotFlat",
                        f"{indent}a(_pack_d({var}))"]
    if kind == "boolean":
        return lines + [f"{indent}if type({var}) is not bool: raise NotFlat",
                        f"{indent}a(b'\\x01' if {var} else b'\\x00')"]
    raise NotFlat(kind)


class _MapPacker:
    """Encodes a ``map<float|double>`` as one block: count, (key, value)..., 0. Per key set a Struct."""

    def __init__(self, value_format: str, max_key_sets: int = 256):
        self.value_code = value_format[1]
        self.pack_value = struct.Struct(value_format).pack
        self.max_key_sets = max_key_sets
        self.by_keys: dict[tuple, tuple[Callable[..., bytes], list]] = {}

    def __call__(self, m: dict) -> bytes:
        if not m:
            return b"\x00"
        keys = tuple(m)
        known = self.by_keys.get(keys)
        if known is None:
            if any(type(k) is not str for k in keys):
                raise NotFlat("map key")
            encoded = [_long(len(b)) + b for b in (k.encode() for k in keys)]
            fmt = "<" + "".join(f"{len(kb)}s{self.value_code}" for kb in encoded)
            template: list = [None] * (2 * len(keys))
            template[0::2] = encoded
            known = (struct.Struct(fmt).pack, template)
            if len(self.by_keys) < self.max_key_sets:
                self.by_keys[keys] = known
        pack, template = known
        args = template.copy()
        args[1::2] = m.values()
        try:
            return _long(len(keys)) + pack(*args) + b"\x00"
        except struct.error:
            raise NotFlat("map value") from None


def _check_code(field: dict, var: str) -> list[str]:
    """The contract's range checks of one field (those of ``Schema.validate``), raising NotFlat instead."""
    branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
    is_float = any(b in ("float", "double") for b in branches)
    bounds = field.get("range")
    tests = []
    if bounds is not None:
        tests.append(f"not ({float(bounds[0])!r} <= {var} <= {float(bounds[1])!r})")
    if is_float:
        tests.append(f"{var} - {var} != 0.0")    # not finite (inf - inf and nan - nan are nan)
    if not tests:
        return []
    return [f"    if {var} is not None and type({var}) is not bool and ({' or '.join(tests)}): raise NotFlat"]


def compile_encoder(raw: dict, header: bytes = b"", checked: bool = False) -> Callable[[dict], bytes]:
    """``encode(record) -> header + Avro binary body`` for the record schema ``raw`` (its .avsc dict).

    Raises :class:`NotFlat` at compile time for a schema with other field types (nested records,
    arrays, fixed, unions other than ``["null", scalar]``), and at call time for a value the compiled
    code does not take (a missing field without default, another Python type).

    ``checked``: the record must also pass the contract's checks (``Schema.validate``: ranges, finite
    floats, string lengths), else NotFlat: the caller then validates (the precise error) and encodes with
    fastavro. One pass over the record instead of two (LocalSummary: 1.8 us of validation saved).

    The code is per schema: runs of float/double fields are packed by one ``struct`` call, string
    fields remember the encodings of their first values (names, sites, topics repeat), small ints
    are a table look-up: Decision 5.7 against 9.0 us, LocalSummary 4.5 against 5.7 us before (2026-12-03)."""
    if raw.get("type") != "record":
        raise NotFlat("not a record")
    from tiertwin.schemas.codec import DEFAULT_MAX_STRING

    namespace: dict[str, Any] = {"NotFlat": NotFlat, "_long": _long, "_pack_f": struct.Struct("<f").pack,
                                 "_pack_d": struct.Struct("<d").pack, "_HEADER": header, "_LAST": _LAST,
                                 "_string": _string, "_struct_error": struct.error}
    lines = ["def encode(r):", "  try:", "    parts = [_HEADER]", "    a = parts.append"]
    run: list[tuple[str, str]] = []     # a run of float/double fields: (variable, struct code)

    def close_run() -> None:
        if run:
            namespace[f"_R{len(lines)}"] = struct.Struct("<" + "".join(code for _, code in run)).pack
            # struct takes any real number (bool and int too, as fastavro does); anything else is struct.error
            lines.append(f"    a(_R{len(lines)}({', '.join(var for var, _ in run)}))")
            run.clear()

    for i, field in enumerate(raw["fields"]):
        name, ftype = field["name"], field["type"]
        var = f"v{i}"
        if "default" in field:
            namespace[f"_D{i}"] = field["default"]
            get = f"    {var} = r.get({name!r}, _D{i})"
        else:
            get = f"    {var} = r[{name!r}]"
        checks = _check_code(field, var) if checked else []
        max_length = int(field.get("maxLength", DEFAULT_MAX_STRING)) if checked else 1 << 62
        if ftype in ("float", "double"):
            lines.append(get)
            lines += checks
            run.append((var, "f" if ftype == "float" else "d"))
            continue
        close_run()
        lines.append(get)
        lines += checks
        if isinstance(ftype, str) and ftype in _SCALARS:
            lines += _scalar_code(ftype, var, "    ", namespace, i, max_length=max_length)
        elif isinstance(ftype, list) and len(ftype) == 2 and ftype[0] == "null" and ftype[1] in _SCALARS:
            lines += [f"    if {var} is None:", "        a(b'\\x00')", "    else:"]
            lines += _scalar_code(ftype[1], var, "        ", namespace, i, prefix=b"\x02", max_length=max_length)
        elif isinstance(ftype, dict) and ftype.get("type") == "enum":
            namespace[f"_E{i}"] = {symbol: _long(k) for k, symbol in enumerate(ftype["symbols"])}
            lines += [f"    e = _E{i}.get({var}) if type({var}) is str else None",
                      "    if e is None: raise NotFlat", "    a(e)"]
        elif isinstance(ftype, dict) and ftype.get("type") == "map" and ftype.get("values") in ("float", "double"):
            # A map's keys repeat from record to record (feature names): per key set, one Struct packs
            # the whole block, each key's encoding as a fixed-size string, in one C call.
            namespace[f"_M{i}"] = _MapPacker("<f" if ftype["values"] == "float" else "<d")
            lines += [f"    if type({var}) is not dict: raise NotFlat", f"    a(_M{i}({var}))"]
        else:
            raise NotFlat(f"field {name}: {ftype!r}")
    close_run()
    lines += ["    return b''.join(parts)",
              "  except (_struct_error, OverflowError, TypeError):",   # not a number, too large for a float, unhashable
              "    raise NotFlat from None"]
    exec("\n".join(lines), namespace)  # noqa: S102 - generated from the project's own .avsc contracts
    return namespace["encode"]
