"""Hypothesis strategies shared by the property tests of untrusted bytes."""

from __future__ import annotations

from hypothesis import strategies as st


def edited(base: bytes, max_edits: int = 4):
    """``base`` with a few bytes flipped, cut, inserted or duplicated."""
    edit = st.tuples(st.integers(0, len(base) - 1), st.integers(1, 255),
                     st.sampled_from(["xor", "cut", "insert", "drop", "repeat"]))

    def apply(edits):
        data = bytearray(base)
        for position, value, kind in edits:
            position %= max(len(data), 1)
            if kind == "xor" and data:
                data[position] ^= value
            elif kind == "cut":
                del data[position:]
            elif kind == "drop":
                del data[position:position + value % 16 + 1]
            elif kind == "repeat":
                data[position:position] = data[position:position + value % 32 + 1]
            else:
                data[position:position] = bytes([value])
        return bytes(data)

    return st.lists(edit, min_size=1, max_size=max_edits).map(apply)
