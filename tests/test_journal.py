"""The journal's pending step (agent/journal.py): the same JSON as before it had a type, and a
journal of the wrong shape is refused (the state store quarantines it)."""

from __future__ import annotations

import pytest

from agent.journal import Pending, Phase

COMPONENTS = {"platform": {"version": "13.2.1", "sequence": 7, "tree_digest": "sha256:" + "0" * 64}}
AS_WRITTEN = [  # what journal.json held for each phase
    {"phase": "staging", "environment": "env-2", "previous": "env-1"},
    {"phase": "trial", "environment": "env-2", "previous": "env-1", "components": COMPONENTS, "bundles": ["d12"]},
    {"phase": "provisioning", "environment": "env-1", "components": COMPONENTS},
    {"phase": "rollback", "environment": "env-1", "previous": "env-2"},
]


@pytest.mark.parametrize("document", AS_WRITTEN, ids=[d["phase"] for d in AS_WRITTEN])
def test_round_trip(document):
    pending = Pending.from_json(document)
    assert pending.phase is Phase(document["phase"]) and pending.to_json() == document


@pytest.mark.parametrize("document", [
    {"phase": "installing", "environment": "env-2", "previous": "env-1"},  # no such phase
    {"phase": "trial", "environment": "env-2", "previous": "env-1"},  # a trial without its components
    {"phase": "staging", "environment": "env-2"},  # without the environment it started from
    {"phase": "staging", "environment": 2, "previous": "env-1"},
    {"phase": "staging", "environment": "env-2", "previous": "env-1", "extra": 1},
    ["staging"],
])
def test_wrong_shapes_are_refused(document):
    with pytest.raises(ValueError):
        Pending.from_json(document)
