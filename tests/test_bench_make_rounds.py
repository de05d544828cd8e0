"""`make bench` timing `bundle make` and ostree's delta in turns (tests/benchmarks/make_rounds.py),
with the real ostree on small trees and the bench's own timer."""
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from tests.benchmarks import make_rounds

BENCH_PY = os.path.join(os.path.dirname(__file__), "benchmarks", "bench.py")
pytestmark = pytest.mark.skipif(shutil.which("ostree") is None, reason="needs ostree (make test installs it)")


@pytest.fixture(scope="module")
def run_timed():
    spec = importlib.util.spec_from_file_location("bench_runner", BENCH_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_timed


def trees(root: Path) -> tuple[Path, Path]:
    old, new = root / "old", root / "new"
    for tree in (old, new):
        (tree / "usr/bin").mkdir(parents=True)
    program = os.urandom(200_000)
    (old / "usr/bin/tool").write_bytes(program)
    (new / "usr/bin/tool").write_bytes(program[:1000] + b"patched" + program[1007:])
    (new / "usr/bin/added").write_bytes(b"new file\n")
    return old, new


def test_rounds_take_turns_and_leave_nothing_behind(tmp_path, run_timed):
    old, new = trees(tmp_path)
    out = tmp_path / "work/bundle"
    # The "make" here copies new: the rounds time whatever command writes the bundle.
    rounds = make_rounds.measure(tmp_path / "work", ["cp", "-a", new, out], out, old, new, run_timed)
    assert [r["first"] for r in rounds] == ["ours", "ostree", "ours"]
    # the order they ran in: /usr/bin/time writes each step's report as the step ends
    ended = {log.stem: log.stat().st_mtime_ns for log in (tmp_path / "work").glob("*.time")}
    assert [ended[f"ours-{n}"] < ended[f"ostree-{n}"] for n in (1, 2, 3)] == [True, False, True]
    assert all(r["ours_bytes"] == 200_000 + 9 for r in rounds)
    assert all(r["ostree_s"] > 0 and r["ours_s"] >= 0 for r in rounds)
    assert len({r["ostree_bytes"] for r in rounds}) == 1 and rounds[0]["ostree_bytes"] > 0
    assert sorted(p.name for p in (tmp_path / "work").iterdir() if p.suffix not in (".log", ".time")) == []


def test_an_ostree_failure_is_raised_with_where_its_log_is(tmp_path, run_timed):
    old, new = trees(tmp_path)
    work = tmp_path / "work"
    # A "make" that removes ostree's repository: ostree's turn of the first round then fails.
    with pytest.raises(RuntimeError, match=r"static-delta generate exited 1 in round 1 \(log: .*ostree-1\.log\)"):
        make_rounds.measure(work, ["rm", "-rf", work / "ostree-repo"], work / "bundle", old, new, run_timed)
    assert not (work / "ostree-repo").exists()
    with pytest.raises(RuntimeError, match="commit"):  # no old tree: its commit fails
        make_rounds.measure(tmp_path / "other", ["true"], tmp_path / "other/bundle", tmp_path / "gone", new,
                            run_timed)
    assert not (tmp_path / "other/ostree-repo").exists()
