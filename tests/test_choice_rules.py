"""The anti-rollback rule as a table (T-ROLLBACK, agent/choice.py): one rule for installed and
absent components, the floor itself allowed, and every "not chosen" with its true reason."""

from __future__ import annotations

import pytest

from agent.format.manifest import Base, Component, Manifest
from agent.format.tree import DIR, Entry, tree_digest
from agent.choice import DeviceFacts, choose
from agent.state import InstalledComponent
from agent.verify import VerifiedBundle

DEVICE = DeviceFacts(product="demo-cabinet", hardware="cab-a", serial="SN0001")
GAME = "game/fortune-wheel"
ROOT = (Entry(path=".", type=DIR, mode=0o755, uid=0, gid=0, mtime=0),)


def digest(sequence: int) -> str:
    """A distinct tree per sequence (the mode differs), as real releases differ."""
    return tree_digest([Entry(path=".", type=DIR, mode=0o700 + sequence, uid=0, gid=0, mtime=0)])


def component(sequence: int, *, base: int | None = None, downgrade_from: tuple[int, ...] = ()) -> Component:
    return Component(name=GAME, version=f"1.{sequence}", sequence=sequence, policy="content",
                     tree_digest=digest(sequence), entries=ROOT, downgrade_from=downgrade_from,
                     base=Base(base, f"1.{base}", digest(base)) if base is not None else None)


def offer(*components: Component) -> dict[str, VerifiedBundle]:
    """Each component in a bundle of its own, as separate sticks' bundles would be."""
    return {f"b{i}": VerifiedBundle(manifest=Manifest(product="demo-cabinet", hardware=("cab-a",), components=(c,),
                                                      objects=(), volumes=()), manifest_bytes=b"", signatures=None)
            for i, c in enumerate(components)}


def installed(sequence: int | None) -> dict[str, InstalledComponent]:
    return {} if sequence is None else {GAME: InstalledComponent(f"1.{sequence}", sequence, digest(sequence))}


FLOOR = "which this machine had committed before (anti-rollback floor)"
OLDER = "is older than the installed sequence"
NEWER_ROUTE = "a newer or cheaper route is on the same medium"

# (installed sequence or None, floor or None, offered, sequence chosen or None, a reason in the decisions)
TABLE = [
    # absent components: the floor applies too (a game added later, then rolled back from)
    (None, None, [component(3)], 3, "new component"),
    (None, 8, [component(7)], None, FLOOR),
    (None, 8, [component(8)], 8, "new component"),
    (None, 8, [component(9)], 9, "new component"),
    (None, 8, [component(7), component(8)], 8, FLOOR),
    (None, 8, [component(8, base=6)], None, "is a delta, and this machine does not have"),
    # installed components after a rollback: installed 6, floor 8
    (6, 8, [component(7)], None, FLOOR),
    (6, 8, [component(8)], 8, "updates sequence 6"),
    (6, 8, [component(8, base=6)], 8, "updates sequence 6"),
    (6, 8, [component(7, base=6), component(8, base=7)], None, FLOOR),  # the chain passes below the floor
    (6, 8, [component(8), component(9)], 9, NEWER_ROUTE),
    (6, 8, [component(5, downgrade_from=(6,))], 5, "a downgrade the signed manifest permits"),
    (6, 8, [component(7, downgrade_from=(6,))], None, FLOOR),  # not a downgrade, and below the floor
    # installed at the floor
    (6, 6, [component(6)], None, "is already installed"),
    (6, 6, [component(5)], None, OLDER),
    (6, 6, [component(5, downgrade_from=(4, 7))], None, OLDER),
    (6, 6, [component(5, downgrade_from=(6,))], 5, "a downgrade the signed manifest permits"),
    (6, 6, [component(7, base=6), component(8, base=7)], 8, "step 2 of 2"),
    (6, 6, [component(8, base=7)], None, "is a delta from sequence 7"),
]


@pytest.mark.parametrize("have, floor, offered, expected, reason", TABLE,
                         ids=[f"have{h}-floor{f}-offer{'+'.join(str(c.sequence) + ('d' if c.is_delta else '') for c in o)}"
                              for h, f, o, _, _ in TABLE])
def test_anti_rollback_table(have, floor, offered, expected, reason):
    floors = {} if floor is None else {GAME: floor}
    chosen, decisions = choose(DEVICE, installed(have), floors, offer(*offered))
    route = chosen.get(GAME, [])
    assert (route[-1].component.sequence if route else None) == expected, decisions
    assert any(reason in d.reason for d in decisions), [d.reason for d in decisions]
    if any(NEWER_ROUTE in d.reason for d in decisions):  # only ever said when another route was chosen
        assert route, decisions
