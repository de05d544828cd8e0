"""Encoding and decoding stored objects: raw, zstd, and zstd patches against a base region.

Patches use libzstd's ``ZSTD_CCtx_refPrefix``/``ZSTD_DCtx_refPrefix`` - what ``zstd
--patch-from`` uses - reached through python-zstandard's cffi binding, because the library's
dictionary API is not an equivalent for large references (FIELD-NOTES: 118.6 MB against 1.5 MB
on a 256 MiB file). The prefix is referenced, not copied, so it can be an mmap of the base
file. Decoding is bounded by the signed sizes: a frame must declare exactly the chunk size the
manifest promises before a byte is decoded, and output goes into a buffer of that size
(T-BOMB in docs/THREAT-MODEL.md).
"""

from __future__ import annotations

import zstandard
from zstandard import backend_cffi

from keys.errors import Refused

_lib, _ffi = backend_cffi.lib, backend_cffi.ffi
# The encoder's window covers prefix + chunk, up to 128 MiB. Single-threaded level 19 loses long
# matches once prefix + chunk exceed ~48-64 MiB (measured here: 7 KB -> 400 KB on a 64 MiB
# prefix), so the bundler keeps them within 64 MiB (bundler/make.py PREFIX_BYTES + chunk size).
MAX_WINDOW_LOG = 27
# Largest output of one frame: bounds every decode buffer, whatever a manifest says.
MAX_DECODED_BYTES = 64 << 20
CONTENTSIZE_UNKNOWN = (1 << 64) - 2  # ZSTD_CONTENTSIZE_UNKNOWN; ZSTD_CONTENTSIZE_ERROR is 2**64 - 1
DECODER_WINDOW_LOG_MAX = 28


class CorruptObject(Refused):
    """A stored object does not decode to what the manifest promises."""


def _check(code: int, what: str) -> int:
    if _lib.ZSTD_isError(code):
        raise CorruptObject(f"{what}: {_ffi.string(_lib.ZSTD_getErrorName(code)).decode()}")
    return code


def _window_log(total: int) -> int:
    log = 10
    while (1 << log) < total and log < MAX_WINDOW_LOG:
        log += 1
    return log


def compress(data: bytes | memoryview, level: int, prefix: bytes | memoryview | None = None) -> bytes:
    """One zstd frame of ``data`` (content size in the header, no checksum: objects are hashed).

    With ``prefix`` the frame may refer back into it and needs the same prefix to decode.
    """
    assert 0 < len(data) <= MAX_DECODED_BYTES
    cctx = _lib.ZSTD_createCCtx()
    assert cctx != _ffi.NULL
    try:
        window = _window_log(len(data) + (len(prefix) if prefix is not None else 0))
        for parameter, value in ((_lib.ZSTD_c_compressionLevel, level), (_lib.ZSTD_c_windowLog, window),
                                 (_lib.ZSTD_c_enableLongDistanceMatching, 1 if prefix is not None else 0),
                                 (_lib.ZSTD_c_contentSizeFlag, 1), (_lib.ZSTD_c_checksumFlag, 0),
                                 (_lib.ZSTD_c_nbWorkers, 0)):
            _check(_lib.ZSTD_CCtx_setParameter(cctx, parameter, value), "zstd parameter")
        prefix_buffer = None  # referenced by the context until it is freed: keep it alive
        if prefix is not None and len(prefix):
            prefix_buffer = _ffi.from_buffer(prefix)
            _check(_lib.ZSTD_CCtx_refPrefix(cctx, prefix_buffer, len(prefix)), "zstd prefix")
        source = _ffi.from_buffer(data)
        capacity = _lib.ZSTD_compressBound(len(data))
        out = _ffi.new("char[]", capacity)
        written = _check(_lib.ZSTD_compress2(cctx, out, capacity, source, len(data)), "zstd compress")
        return _ffi.buffer(out, written)[:]
    finally:
        _lib.ZSTD_freeCCtx(cctx)


def declared_size(stored: bytes) -> int:
    """The content size the single zstd frame ``stored`` declares. Raises CorruptObject."""
    source = _ffi.from_buffer(stored)
    frame = _lib.ZSTD_findFrameCompressedSize(source, len(stored))
    _check(frame, "stored object is not a zstd frame")
    if frame != len(stored):
        raise CorruptObject("stored object is not exactly one zstd frame")
    # ZSTD_CONTENTSIZE_UNKNOWN/ERROR are values near 2**64: callers compare against a bound.
    return _lib.ZSTD_getFrameContentSize(source, len(stored))


def decompress(stored: bytes, size: int, prefix: bytes | memoryview | None = None) -> bytes:
    """Decode one frame into exactly ``size`` bytes. Raises CorruptObject."""
    assert 0 < size <= MAX_DECODED_BYTES
    declared = declared_size(stored)
    if declared >= CONTENTSIZE_UNKNOWN:
        raise CorruptObject("stored object does not declare its content size")
    try:
        window = zstandard.get_frame_parameters(stored).window_size
    except zstandard.ZstdError as error:
        raise CorruptObject(f"stored object's zstd frame header is invalid: {error}") from None
    if window > 1 << DECODER_WINDOW_LOG_MAX:
        # One-shot decoding ignores ZSTD_d_windowLogMax, so the documented limit is checked here.
        raise CorruptObject(f"stored object's zstd window is {window} bytes (limit {1 << DECODER_WINDOW_LOG_MAX})")
    source = _ffi.from_buffer(stored)
    if declared != size:
        raise CorruptObject(f"stored object declares {declared} bytes, the manifest says {size}")
    dctx = _lib.ZSTD_createDCtx()
    assert dctx != _ffi.NULL
    try:
        _check(_lib.ZSTD_DCtx_setParameter(dctx, _lib.ZSTD_d_windowLogMax, DECODER_WINDOW_LOG_MAX),
               "zstd parameter")
        prefix_buffer = None  # referenced by the context until it is freed: keep it alive
        if prefix is not None and len(prefix):
            prefix_buffer = _ffi.from_buffer(prefix)
            _check(_lib.ZSTD_DCtx_refPrefix(dctx, prefix_buffer, len(prefix)), "zstd prefix")
        out = _ffi.new("char[]", size)
        written = _check(_lib.ZSTD_decompressDCtx(dctx, out, size, source, len(stored)), "zstd decode")
        if written != size:
            raise CorruptObject(f"stored object decodes to {written} bytes, the manifest says {size}")
        return _ffi.buffer(out, size)[:]
    finally:
        _lib.ZSTD_freeDCtx(dctx)


def decode(encoding: str, stored: bytes, size: int, prefix: bytes | memoryview | None = None) -> bytes:
    """Bytes of a chunk from its stored object. Raises CorruptObject."""
    if encoding == "raw":
        if len(stored) != size:
            raise CorruptObject(f"raw object has {len(stored)} bytes, the manifest says {size}")
        return stored
    if encoding == "zstd-patch" and prefix is None:
        raise CorruptObject("a patch object needs its base region")
    return decompress(stored, size, prefix if encoding == "zstd-patch" else None)
