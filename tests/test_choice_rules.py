"""The choice as tables (agent/choice.py). First the anti-rollback rule (T-ROLLBACK): one rule for
installed and absent components, the floor itself allowed, and every "not chosen" with its true
reason. Then every rule of docs/AGENT.md's "Choice", one row each, on signed and verified manifests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest

from agent.format.manifest import Base, Component, Manifest, StoredObject, Volume
from agent.format.tree import DIR, FILE, Chunk, Entry, tree_digest
from agent.choice import DeviceFacts, choose
from agent.state import InstalledComponent
from agent.verify import VerifiedBundle, verify_bundle
from keys.rotation import trust_anchor

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


# --- choose(), rule by rule (docs/AGENT.md, "What gets installed", step 3 "Choice") ----------------
#
# Each row: this machine, what it has installed (and its floors), the bundles on the medium - real
# manifests built with agent/format/manifest.py, serialised, signed and verified like a stick's -
# the route chosen per component (bundle ids in order), and decisions that must be among the
# reasons given: (bundle, component or None for the whole bundle, verdict, a fragment of the reason).
#
# A component's tree at sequence N is the same whichever bundle carries it: a large file that
# never changes (art.bin) and a small one that does (version.txt). A full update stores both; a
# delta copies art.bin from its base and stores version.txt alone, so it reads far fewer bytes.

PLATFORM = "platform"
ART = 4096  # bytes of art.bin: what a full update reads and a delta does not


def _content(name: str, sequence: int) -> dict[str, bytes]:
    return {"art.bin": name.encode() * (ART // len(name)) + b"\n" * (ART % len(name)),
            "version.txt": f"{name} sequence {sequence}\n".encode()}


def _listing(name: str, sequence: int, *, from_base: bool = False) -> tuple[Entry, ...]:
    """The component's entries; with ``from_base``, art.bin is copied from the installed tree."""
    entries = [Entry(path=".", type=DIR, mode=0o755, uid=0, gid=0, mtime=0)]
    for path, data in sorted(_content(name, sequence).items()):
        stored = not (from_base and path == "art.bin")
        entries.append(Entry(path=path, type=FILE, mode=0o644, uid=0, gid=0, mtime=0, size=len(data),
                             sha256=hashlib.sha256(data).hexdigest(), base_path=None if stored else path,
                             chunks=(Chunk(hashlib.sha256(data).hexdigest(), len(data)),) if stored else ()))
    return tuple(entries)


def _digest(name: str, sequence: int) -> str:
    return tree_digest(_listing(name, sequence))


def update(name: str, sequence: int, *, base: int | None = None, targets: tuple[str, ...] = (),
           downgrade_from: tuple[int, ...] = (), base_digest: str | None = None) -> Component:
    """Component ``name`` at ``sequence``: a full update, or a delta from ``base`` (whose tree digest
    is the real one unless ``base_digest`` says otherwise)."""
    return Component(name=name, version=f"1.{sequence}", sequence=sequence,
                     policy="system" if name == PLATFORM else "content", tree_digest=_digest(name, sequence),
                     entries=_listing(name, sequence, from_base=base is not None), targets=targets,
                     downgrade_from=downgrade_from,
                     base=None if base is None else Base(base, f"1.{base}", base_digest or _digest(name, base)))


def bundle(*components: Component, product: str = "demo-cabinet", hardware: tuple[str, ...] = ("cab-a",)) -> Manifest:
    """A manifest whose objects (raw, one per stored file) tile one volume, as the bundler lays them out."""
    data = {c.sha256: _content(comp.name, comp.sequence)[c.path]
            for comp in components for c in comp.entries if c.chunks}
    objects, offset = [], 0
    for object_id, content in data.items():
        objects.append(StoredObject(id=object_id, offset=offset, size=len(content), encoding="raw"))
        offset += len(content)
    volume = hashlib.sha256(b"".join(data.values())).hexdigest()
    return Manifest(product=product, hardware=hardware, components=components, objects=tuple(objects),
                    volumes=(Volume(name=f"{volume}.vol", size=offset, sha256=volume),))


def have(name: str, sequence: int, *, digest: str | None = None) -> dict[str, InstalledComponent]:
    """``name`` installed at ``sequence`` (with its real tree, unless ``digest`` says otherwise)."""
    return {name: InstalledComponent(f"1.{sequence}", sequence, digest or _digest(name, sequence))}


@dataclass(frozen=True)
class Rule:
    rule: str
    installed: dict[str, InstalledComponent]
    bundles: dict[str, Manifest]
    chosen: dict[str, list[str]]  # component -> the route's bundle ids, in order
    decisions: tuple[tuple[str, str | None, str, str], ...]
    floors: dict[str, int] = field(default_factory=dict)
    device: DeviceFacts = DEVICE


ELSEWHERE = "d" * 64  # a tree digest no release has: the installed tree is not the delta's base
RULES = [
    # The bundle must be for this product and list this hardware model (T-PRODUCT, T-HARDWARE).
    Rule("product-mismatch", {}, {"other": bundle(update(GAME, 3), product="other-cabinet")}, {},
         (("other", None, "not-applicable", "bundle is for product other-cabinet, this machine is demo-cabinet"),)),
    Rule("hardware-mismatch", {}, {"cab-b": bundle(update(GAME, 3), hardware=("cab-b", "cab-c"))}, {},
         (("cab-b", None, "not-applicable", "bundle is for hardware cab-b, cab-c, this machine is cab-a"),)),
    Rule("hardware-listed", {}, {"cab-ab": bundle(update(GAME, 3), hardware=("cab-b", "cab-a"))}, {GAME: ["cab-ab"]},
         (("cab-ab", GAME, "chosen", "new component game/fortune-wheel 1.3 (sequence 3)"),)),
    # A component the machine lacks: a full update only, and only if this serial is targeted (T-TARGET).
    Rule("targeted-elsewhere", {}, {"t": bundle(update(GAME, 3, targets=("SN0002", "SN0003")))}, {},
         (("t", GAME, "not-applicable", "is targeted at other machines (serial SN0001 not listed)"),)),
    Rule("targeted-here", {}, {"t": bundle(update(GAME, 3, targets=("SN0002", "SN0001")))}, {GAME: ["t"]},
         (("t", GAME, "chosen", "new component game/fortune-wheel 1.3 (sequence 3)"),)),
    Rule("targets-bind-new-components-only", have(GAME, 2), {"t": bundle(update(GAME, 3, targets=("SN0002",)))},
         {GAME: ["t"]}, (("t", GAME, "chosen", "game/fortune-wheel 1.3 (sequence 3) updates sequence 2 (1.2)"),)),
    Rule("new-component-from-a-delta", {}, {"d": bundle(update(GAME, 3, base=2))}, {},
         (("d", GAME, "not-applicable", "is a delta, and this machine does not have game/fortune-wheel"),)),
    # A higher sequence: a full update, or a delta whose base is exactly the installed sequence and tree.
    Rule("full-update", have(PLATFORM, 6), {"full": bundle(update(PLATFORM, 7))}, {PLATFORM: ["full"]},
         (("full", PLATFORM, "chosen", "platform 1.7 (sequence 7) updates sequence 6 (1.6)"),)),
    Rule("delta-base-matches", have(PLATFORM, 6), {"d67": bundle(update(PLATFORM, 7, base=6))}, {PLATFORM: ["d67"]},
         (("d67", PLATFORM, "chosen", "platform 1.7 (sequence 7) updates sequence 6 (1.6)"),)),
    Rule("delta-base-other-sequence", have(PLATFORM, 6), {"d57": bundle(update(PLATFORM, 7, base=5))}, {},
         (("d57", PLATFORM, "not-applicable",
           "platform 1.7 (sequence 7) is a delta from sequence 5 (1.5); this machine has sequence 6 (1.6)"),)),
    Rule("delta-base-other-tree", have(PLATFORM, 6, digest="sha256:" + ELSEWHERE),
         {"d67": bundle(update(PLATFORM, 7, base=6))}, {},
         (("d67", PLATFORM, "not-applicable", "is a delta from sequence 6 (1.6); this machine has sequence 6 (1.6)"),)),
    Rule("delta-beside-its-full-update", have(PLATFORM, 6),
         {"d57": bundle(update(PLATFORM, 7, base=5)), "full": bundle(update(PLATFORM, 7))}, {PLATFORM: ["full"]},
         (("d57", PLATFORM, "not-applicable", "is a delta from sequence 5 (1.5)"),
          ("full", PLATFORM, "chosen", "updates sequence 6 (1.6)"))),
    # The same sequence is a no-op; a lower one is a replay unless the signed manifest permits it.
    Rule("same-sequence", have(PLATFORM, 6), {"again": bundle(update(PLATFORM, 6))}, {},
         (("again", PLATFORM, "no-op", "platform 1.6 (sequence 6) is already installed"),)),
    Rule("replay-older", have(PLATFORM, 6), {"old": bundle(update(PLATFORM, 5))}, {},
         (("old", PLATFORM, "refused", "platform 1.5 (sequence 5) is older than the installed sequence 6 (1.6); "
                                       "the manifest does not permit that downgrade (an older release replayed)"),)),
    Rule("signed-downgrade", have(PLATFORM, 6), {"down": bundle(update(PLATFORM, 5, downgrade_from=(6,)))},
         {PLATFORM: ["down"]},
         (("down", PLATFORM, "chosen", "platform 1.5 (sequence 5) replaces sequence 6 (1.6): a downgrade the signed "
                                       "manifest permits"),)),
    Rule("downgrade-from-another-sequence", have(PLATFORM, 6),
         {"down": bundle(update(PLATFORM, 5, downgrade_from=(7, 8)))}, {},
         (("down", PLATFORM, "refused", "the manifest does not permit that downgrade"),)),
    Rule("signed-downgrade-delta-other-base", have(PLATFORM, 6),
         {"down": bundle(update(PLATFORM, 5, base=7, downgrade_from=(6,)))}, {},
         (("down", PLATFORM, "not-applicable", "is a permitted downgrade, but a delta from another base"),)),
    Rule("below-the-floor", have(PLATFORM, 6), {"full": bundle(update(PLATFORM, 7))}, {},
         (("full", PLATFORM, "refused", "is older than sequence 8, which this machine had committed before "
                                        "(anti-rollback floor)"),), floors={PLATFORM: 8}),
    # Chains: every delta's base is exactly the previous step's result, possibly from a full update.
    Rule("chain-of-deltas", have(PLATFORM, 6),
         {"d67": bundle(update(PLATFORM, 7, base=6)), "d78": bundle(update(PLATFORM, 8, base=7))},
         {PLATFORM: ["d67", "d78"]},
         (("d67", PLATFORM, "chosen", "step 1 of 2: platform 1.7 (sequence 7) updates sequence 6 (1.6)"),
          ("d78", PLATFORM, "chosen", "step 2 of 2: platform 1.8 (sequence 8) is a delta from sequence 7 (1.7)"))),
    Rule("chain-from-a-full-update", {},
         {"full7": bundle(update(GAME, 7)), "d78": bundle(update(GAME, 8, base=7)),
          "d89": bundle(update(GAME, 9, base=8))},
         {GAME: ["full7", "d78", "d89"]},
         (("full7", GAME, "chosen", "step 1 of 3: new component game/fortune-wheel 1.7 (sequence 7)"),
          ("d89", GAME, "chosen", "step 3 of 3"))),
    Rule("chain-with-a-gap", have(PLATFORM, 6),
         {"d67": bundle(update(PLATFORM, 7, base=6)), "d89": bundle(update(PLATFORM, 9, base=8))},
         {PLATFORM: ["d67"]},
         (("d67", PLATFORM, "chosen", "updates sequence 6 (1.6)"),
          ("d89", PLATFORM, "not-applicable", "is a delta from sequence 8 (1.8); this machine has sequence 6"))),
    # The newest reachable sequence wins, by the route that reads the fewest bytes.
    Rule("newest-wins-over-cheapest", have(PLATFORM, 6),
         {"d67": bundle(update(PLATFORM, 7, base=6)), "full8": bundle(update(PLATFORM, 8))}, {PLATFORM: ["full8"]},
         (("d67", PLATFORM, "not-applicable", "a newer or cheaper route is on the same medium"),
          ("full8", PLATFORM, "chosen", "updates sequence 6 (1.6)"))),
    Rule("cheapest-delta-over-full", have(PLATFORM, 6),
         {"full8": bundle(update(PLATFORM, 8)), "d68": bundle(update(PLATFORM, 8, base=6))}, {PLATFORM: ["d68"]},
         (("full8", PLATFORM, "not-applicable",
           "updates sequence 6 (1.6); a newer or cheaper route is on the same medium"),
          ("d68", PLATFORM, "chosen", "platform 1.8 (sequence 8) updates sequence 6 (1.6)"))),
    Rule("cheapest-chain-over-full", have(PLATFORM, 6),
         {"full8": bundle(update(PLATFORM, 8)), "d67": bundle(update(PLATFORM, 7, base=6)),
          "d78": bundle(update(PLATFORM, 8, base=7))}, {PLATFORM: ["d67", "d78"]},
         (("full8", PLATFORM, "not-applicable", "a newer or cheaper route is on the same medium"),
          ("d78", PLATFORM, "chosen", "step 2 of 2"))),
    Rule("cheapest-delta-over-chain", have(PLATFORM, 6),
         {"d67": bundle(update(PLATFORM, 7, base=6)), "d78": bundle(update(PLATFORM, 8, base=7)),
          "d68": bundle(update(PLATFORM, 8, base=6))}, {PLATFORM: ["d68"]},
         (("d67", PLATFORM, "not-applicable", "a newer or cheaper route is on the same medium"),
          ("d78", PLATFORM, "not-applicable", "is a delta from sequence 7 (1.7)"),
          ("d68", PLATFORM, "chosen", "updates sequence 6 (1.6)"))),
    Rule("cheapest-full-from-a-stranger-tree", have(PLATFORM, 6, digest="sha256:" + ELSEWHERE),
         {"d68": bundle(update(PLATFORM, 8, base=6)), "full8": bundle(update(PLATFORM, 8))}, {PLATFORM: ["full8"]},
         (("d68", PLATFORM, "not-applicable", "is a delta from sequence 6 (1.6)"),
          ("full8", PLATFORM, "chosen", "updates sequence 6 (1.6)"))),
    # Each component is decided on its own, also inside one bundle.
    Rule("per-component", {**have(PLATFORM, 6), **have(GAME, 2)},
         {"both": bundle(update(PLATFORM, 7), update(GAME, 2))}, {PLATFORM: ["both"]},
         (("both", PLATFORM, "chosen", "updates sequence 6 (1.6)"),
          ("both", GAME, "no-op", "game/fortune-wheel 1.2 (sequence 2) is already installed"))),
]


def _verified(keyring, manifest: Manifest) -> VerifiedBundle:
    """As the agent gets it from a stick: the stored manifest, signed, checked and parsed again."""
    root = trust_anchor(keyring.candidate(keyring.root(1, ("root1",), 1, ("rel1",), 1), ("root1",)))
    stored = manifest.to_stored()
    return verify_bundle(stored, keyring.sign(stored, ("rel1",)), root)


@pytest.mark.parametrize("rule", RULES, ids=[r.rule for r in RULES])
def test_choice_rule(rule: Rule, keyring):
    bundles = {name: _verified(keyring, manifest) for name, manifest in rule.bundles.items()}
    assert {n: b.manifest for n, b in bundles.items()} == rule.bundles  # the models are valid manifests
    chosen, decisions = choose(rule.device, rule.installed, rule.floors, bundles)
    assert {name: [c.bundle for c in route] for name, route in chosen.items()} == rule.chosen, decisions
    for name, route in chosen.items():  # the route's steps are the offered components themselves
        assert [c.component for c in route] == [rule.bundles[c.bundle].component(name) for c in route]
    given = {(d.bundle, d.component): d for d in decisions}
    assert len(given) == len(decisions), "one decision per bundle and component"
    for bundle_id, component, verdict, reason in rule.decisions:
        decision = given[(bundle_id, component)]
        assert (decision.verdict, reason in decision.reason) == (verdict, True), decision
    # Exactly the chosen route is reported as chosen.
    assert {(d.bundle, d.component) for d in decisions if d.verdict == "chosen"} == \
        {(c.bundle, name) for name, route in chosen.items() for c in route}

