"""A Python-2 style protocol-2 pickle writer, for byte-reproducible CIFAR pickles.

The official CIFAR pickles were written by Python 2: strings are 8-bit `str` (opcodes
SHORT_BINSTRING / BINSTRING), which Python 3 loads as bytes with encoding="bytes" and as str
with encoding="latin1". Python 3's pickler cannot emit those opcodes for bytes, so the stream
is assembled opcode by opcode. No memo opcodes are written: the output depends only on the
data, which is what makes the files reproducible (and checkable by sha256).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_PROTO2 = b"\x80\x02"
_STOP = b"."
_MARK, _TUPLE, _REDUCE, _BUILD = b"(", b"t", b"R", b"b"
_EMPTY_DICT, _SETITEMS, _EMPTY_LIST, _APPENDS = b"}", b"u", b"]", b"e"
_NONE, _TRUE, _FALSE = b"N", b"\x88", b"\x89"
_BININT1, _BININT = b"K", b"J"
_SHORT_BINSTRING, _BINSTRING = b"U", b"T"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


class Py2Pickler:
    """Serialise dict / list / tuple / bytes / int / bool / None / uint8 ndarray."""

    def __init__(self) -> None:
        self.out = bytearray(_PROTO2)

    def dumps(self, obj: object) -> bytes:
        self.write(obj)
        return bytes(self.out + _STOP)

    def write(self, obj: object) -> None:
        out = self.out
        if obj is None:
            out += _NONE
        elif isinstance(obj, bool):  # before int: bool is an int subclass
            out += _TRUE if obj else _FALSE
        elif isinstance(obj, int):
            out += _BININT1 + bytes([obj]) if 0 <= obj <= 0xFF else _BININT + struct.pack("<i", obj)
        elif isinstance(obj, bytes):
            n = len(obj)
            out += (_SHORT_BINSTRING + bytes([n]) if n <= 0xFF else _BINSTRING + struct.pack("<I", n))
            out += obj
        elif isinstance(obj, tuple):
            out += _MARK
            for item in obj:
                self.write(item)
            out += _TUPLE
        elif isinstance(obj, list):
            out += _EMPTY_LIST + _MARK
            for item in obj:
                self.write(item)
            out += _APPENDS
        elif isinstance(obj, dict):
            out += _EMPTY_DICT + _MARK
            for key, value in obj.items():
                self.write(key)
                self.write(value)
            out += _SETITEMS
        elif isinstance(obj, np.ndarray):
            self._write_uint8_array(obj)
        else:
            raise TypeError(f"Py2Pickler cannot write {type(obj).__name__}")

    def _write_uint8_array(self, arr: np.ndarray) -> None:
        """What numpy's ndarray.__reduce__ produces, with the historic `numpy.core` module path
        that the official files (and every numpy since 1.x, via its compatibility shim) use."""
        if arr.dtype != np.uint8:
            raise TypeError(f"only uint8 arrays are supported, got {arr.dtype}")
        out = self.out
        # _reconstruct(ndarray, (0,), b"b")
        out += _global("numpy.core.multiarray", "_reconstruct") + _MARK + _global("numpy", "ndarray")
        self.write((0,))
        self.write(b"b")
        out += _TUPLE + _REDUCE
        # __setstate__((version, shape, dtype, fortran_order, raw bytes))
        out += _MARK
        self.write(1)
        self.write(tuple(int(s) for s in arr.shape))
        out += _global("numpy", "dtype")
        self.write((b"u1", 0, 1))
        out += _REDUCE
        self.write((3, b"|", None, None, None, -1, -1, 0))  # dtype state: byte order n/a
        out += _BUILD
        self.write(False)
        self.write(np.ascontiguousarray(arr).tobytes())
        out += _TUPLE + _BUILD


def write_py2_pickle(obj: object, path: Path) -> None:
    path.write_bytes(Py2Pickler().dumps(obj))
