"""The `make bench` report (tests/benchmarks/bench.py) on canned results: the `bench:` line, the ratio to
the smallest peer that succeeded, and the goals, without measuring anything."""
import importlib.util
import json
import os
import re

import pytest

from tests.benchmarks import make_rounds

BENCH_PY = os.path.join(os.path.dirname(__file__), "benchmarks", "bench.py")
LINE = re.compile(r"bench: platform \d+\.\d\d, kernel \d+\.\d\d, synthetic \d+\.\d\d of the smallest peer; "
                  r"peak RSS \d+ MiB")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_runner", BENCH_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step(wall, rss):
    return {"wall_s": wall, "rss_mib": rss}


def ours(total, make, apply, install):
    return {"bytes_total": total, "bytes_payload": total - 300, "bytes_manifest": 250, "bytes_signatures": 50,
            "bytes_other": 0, "manifest_raw_bytes": 2000, "manifest_entries": 12, "make": make, "apply": apply,
            "install": install,
            "make_load1": [1.0, 1.5], "work_fs": "ext4", "gz_stored": 0, "gz_recipe": 0,
            "component": {"files": {"changed": {"files": 2, "bytes": 4096, "stored_bytes": total - 300}},
                          "stored_bytes": total - 300,
                          "largest_changes": [{"path": "usr/bin/tool", "kind": "changed", "size": 4096,
                                               "stored_bytes": total - 300, "elf": True, "gzip_recipe": False}]},
            "peers_dropped": {}}


def peer(method, nbytes, make_s=10.0, error=None):
    return {"method": method, "bytes": nbytes, "make_s": make_s, "make_rss_mb": 100, "make_load1": 1.2,
            "apply_s": 1.0, "apply_rss_mb": 20, "detail": f"{method} detail", "error": error}


def peers(pair, rows):
    return {"pair": pair, "tree": {"old_bytes": 1 << 20, "old_files": 10, "new_bytes": 1 << 20, "new_files": 11,
                                   "files_changed": 2, "files_added": 1, "files_removed": 0}, "rows": rows}


def write_results(root):
    results = {
        "run.json": {"pairs": ["platform", "kernel", "synthetic"], "date": "2026-01-01 00:00 UTC",
                     "peer_limit_s": None, "bundle_version": "0.1.0", "python_version": "Python 3.11.7",
                     "zstandard": "0.25.0", "peer_versions": {"zstd": "1.5.4"},
                     "machine": {"cpus": 2, "cpu_model": "test", "kernel": "6.1", "mem_gib": 24.0}},
        # platform: 600 / 800 (file-bsdiff) = 0.75. tar-zstd-patch is smaller but its apply failed, ostree failed.
        "ours-platform.json": ours(600, step(20.0, 200.4), step(8.0, 70.0), step(7.0, 60.0)),
        "peers-platform.json": peers("platform", [
            peer("tar-zstd-patch", 500, error="apply: result differs from new"),
            peer("file-zstd", 1000), peer("file-bsdiff", 800),
            peer("ostree", None, make_s=None, error="timeout after 900s")]),
        # kernel: 1234 / 2000 (file-zstd+renames) = 0.617 -> 0.62; ours is slower than ostree here.
        "ours-kernel.json": ours(1234, step(30.0, 150.0), step(9.0, 60.0), step(6.0, 50.0)),
        "peers-kernel.json": peers("kernel", [peer("file-zstd", 90000), peer("file-zstd+renames", 2000),
                                              peer("ostree", 5000, make_s=25.0)]),
        # synthetic: 999 / 1000 = 0.999 -> 1.00
        "ours-synthetic.json": ours(999, step(50.0, 240.0), step(20.0, 90.0), step(15.0, 257.0)),
        "peers-synthetic.json": peers("synthetic", [peer("tar-xdelta3-B", 1000), peer("ostree", 3000, make_s=60.0)]),
        # the largest RSS of ours anywhere: the big file's apply step
        "bigfile.json": {**ours(2_100_000, step(40.0, 180.0), step(15.0, 300.6), step(30.0, 120.0)), "size": 4 << 30,
                         "rewritten": 2 << 20},
        # synthetic: the new content alone takes 880 + 20 of the smallest peer's 1000 -> 0.90 > 0.8
        "unavoidable-synthetic.json": {"new_game": "games/g04-new", "added_files": 2, "files": 9, "bytes": 950,
                                       "compressor": "tar | xz -9e", "compressed_bytes": 880,
                                       "written_random_bytes": 20, "least_bytes": 900},
        "floor-platform.json": {"copied_files": 3, "copied_bytes": 8192, "copy_s": 1.0, "hashed_files": 11,
                                "hashed_bytes": 1 << 20, "hash_s": 4.0, "floor_s": 5.0},
    }
    os.makedirs(root, exist_ok=True)
    for name, data in results.items():
        with open(os.path.join(root, name), "w") as f:
            json.dump(data, f)


def test_bench_line_and_ratios(bench, tmp_path, capsys):
    write_results(tmp_path / "results")
    out = tmp_path / "BENCHMARKS.md"
    assert bench.main(["--report-only", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == "bench: platform 0.75, kernel 0.62, synthetic 1.00 of the smallest peer; peak RSS 301 MiB"
    assert LINE.fullmatch(printed[-1])
    report = out.read_text()
    assert printed[-1] in report


def test_smallest_peer_skips_failed_rows(bench):
    rows = [peer("a", 10, error="exit 1: boom"), peer("b", None, error="timeout after 900s"), peer("c", 30),
            peer("d", 20)]
    assert bench.smallest_peer(rows)["method"] == "d"
    assert bench.smallest_peer([peer("a", None, error="timeout")]) is None
    assert bench.ratio_to_smallest({"bytes_total": 5}, {"rows": rows}) == 0.25


def test_goals_report_each_value(bench, tmp_path):
    write_results(tmp_path)
    goals = {goal: (measured, ok) for goal, measured, ok in bench.goal_rows(bench.load_results(str(tmp_path)))}
    assert goals["platform: bytes <= 0.6x the smallest peer"] == ("0.75x (file-bsdiff)", False)
    assert goals["kernel: bytes <= 0.8x the smallest peer"] == ("0.62x (file-zstd+renames)", True)
    assert goals["4 GiB file: `bundle verify` (applies) peak RSS <= 256 MiB"] == ("301 MiB", False)
    assert goals["synthetic: `bundle make` peak RSS <= 256 MiB"] == ("240 MiB", True)
    assert goals["synthetic: bytes <= 0.8x the smallest peer"] == (
        "1.00x (tar-xdelta3-B); the new content alone needs 0.90x (see the pair)", False)
    assert goals["platform: `bundle make` wall <= `ostree static-delta generate`"][1] is None  # ostree failed
    assert goals["kernel: `bundle make` wall <= `ostree static-delta generate`"] == ("30.0 s vs 25.0 s", False)
    assert goals["synthetic: `bundle make` wall <= `ostree static-delta generate`"][1] is True
    assert goals["synthetic: the device's install (`bundle-agent on-insert`) peak RSS <= 256 MiB"] == ("257 MiB", False)
    # the device's install is held against the floor, not `bundle verify`, which builds the whole tree
    assert goals["platform: install <= 1.5x the floor"] == ("7.0 s vs floor 5.0 s = 1.40x", True)


def test_the_floor_on_the_cabinets_disk_is_reported_beside_the_goal_it_does_not_decide(bench, tmp_path):
    write_results(tmp_path)
    path = tmp_path / "ours-platform.json"
    ours_platform = json.loads(path.read_text())
    ours_platform["install"]["cabinet_floor"] = {"copy_s": 1.0, "hash_s": 3.0, "sync_s": 0.5, "floor_s": 4.5}
    path.write_text(json.dumps(ours_platform))
    results = bench.load_results(str(tmp_path))
    goals = {goal: (measured, ok) for goal, measured, ok in bench.goal_rows(results)}
    assert goals["platform: install <= 1.5x the floor"] == (
        "7.0 s vs floor 5.0 s = 1.40x (the floor on the cabinet's disk: 4.5 s = 1.56x)", True)
    out = tmp_path / "BENCHMARKS.md"
    assert bench.main(["--report-only", str(tmp_path), "--out", str(out)]) == 0
    report = out.read_text()
    assert "| SHA-256 of every file of the snapshot | 3.0 |" in report
    assert "| **floor on the cabinet's disk** | **4.5** |" in report


def test_pair_without_a_successful_peer(bench, tmp_path, capsys):
    write_results(tmp_path)
    with open(tmp_path / "peers-kernel.json", "w") as f:
        json.dump(peers("kernel", [peer("ostree", None, error="exit 1")]), f)
    assert bench.main(["--report-only", str(tmp_path), "--out", str(tmp_path / "r.md")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("bench: platform 0.75, kernel -, synthetic 1.00")


def test_unavoidable_bytes_are_stated_with_the_pair(bench, tmp_path):
    write_results(tmp_path)
    report = bench.render_report(bench.load_results(str(tmp_path)))
    synthetic = report.split("## Pair `synthetic`")[1]
    assert "the new game `games/g04-new` and 2 files added to other games, 9 files" in " ".join(synthetic.split())
    assert "0.90x the smallest peer by itself" in " ".join(synthetic.split())
    assert "the 0.8x goal cannot be met on this tree" in " ".join(synthetic.split())
    assert "Bytes no delta can avoid" not in report.split("## Pair `synthetic`")[0]  # not said of the other pairs


def test_the_new_content_is_the_new_game_the_added_files_and_the_random_bytes_written(bench, tmp_path):
    """measure_new_content on a small pair laid out as synth.py lays one out: real tar and xz."""
    new = tmp_path / "new"
    (new / "games/g01-new/data").mkdir(parents=True)
    (new / "games/g00/scripts").mkdir(parents=True)
    (new / "games/g01-new/data/a.pak").write_bytes(os.urandom(30_000))
    (new / "games/g01-new/manifest.json").write_bytes(b"{}")
    (new / "games/g00/scripts/new_x0.dat").write_bytes(b"words " * 5_000)
    (new / "games/g00/scripts/kept.dat").write_bytes(os.urandom(50_000))  # in old too: not counted
    (tmp_path / "changes.json").write_text(json.dumps({
        "new_game": {"id": "g01-new"}, "added": ["games/g00/scripts/new_x0.dat"],
        "modified": {"games/g00/scripts/kept.dat": [{"op": "edit", "offset": 5, "length": 100},
                                                    {"op": "cut", "offset": 900, "length": 7000},
                                                    {"op": "insert", "offset": 9000, "length": 20}]}}))
    measured = bench.Bench.measure_new_content(None, str(tmp_path))
    assert (measured["new_game"], measured["added_files"], measured["files"]) == ("games/g01-new", 1, 3)
    assert measured["bytes"] == 30_000 + 2 + 30_000
    assert measured["written_random_bytes"] == 120  # a cut writes nothing
    assert 30_000 < measured["compressed_bytes"] < 31_000  # the random pak, the text nearly free
    assert measured["least_bytes"] == measured["compressed_bytes"] + 120
    (tmp_path / "changes.json").write_text(json.dumps({"new_game": None, "added": [], "modified": {}}))
    assert bench.Bench.measure_new_content(None, str(tmp_path)) is None


def write_rounds(root, rounds):
    with open(os.path.join(root, "rounds-kernel.json"), "w") as f:
        json.dump(rounds, f)


def test_close_make_times_are_decided_by_the_medians_of_the_rounds_in_turns(bench, tmp_path):
    write_results(tmp_path)
    # kernel's single runs: ours 30.0 s, ostree 25.0 s (ours slower); in turns ours is faster twice of three
    write_rounds(tmp_path, {"rounds": [
        {"first": "ours", "ours_s": 21.0, "ours_bytes": 1234, "ostree_s": 24.0, "ostree_bytes": 5000},
        {"first": "ostree", "ours_s": 26.0, "ours_bytes": 1234, "ostree_s": 23.0, "ostree_bytes": 5000},
        {"first": "ours", "ours_s": 22.0, "ours_bytes": 1234, "ostree_s": 25.0, "ostree_bytes": 5000}]})
    results = bench.load_results(str(tmp_path))
    goals = {goal: (measured, ok) for goal, measured, ok in bench.goal_rows(results)}
    assert goals["kernel: `bundle make` wall <= `ostree static-delta generate`"] == (
        "22.0 s vs 24.0 s, medians of 3 runs each in turns (single runs: 30.0 s vs 25.0 s)", True)
    assert goals["synthetic: `bundle make` wall <= `ostree static-delta generate`"] == ("50.0 s vs 60.0 s", True)
    kernel = bench.render_report(results).split("## Pair `kernel`")[1].split("## Pair `synthetic`")[0]
    assert "| 2 | ostree | 26.0 | 1,234 | 23.0 | 5,000 |" in kernel
    assert "| **median** | | **22.0** | | **24.0** | |" in kernel


def test_the_single_make_times_decide_when_the_rounds_in_turns_failed(bench, tmp_path):
    write_results(tmp_path)
    write_rounds(tmp_path, {"error": "ostree static-delta generate exited 1 in round 2"})
    results = bench.load_results(str(tmp_path))
    goals = {goal: (measured, ok) for goal, measured, ok in bench.goal_rows(results)}
    assert goals["kernel: `bundle make` wall <= `ostree static-delta generate`"] == (
        "30.0 s vs 25.0 s; timing them again in turns failed: ostree static-delta generate exited 1 in round 2",
        False)
    assert "Timing them again in turns failed: ostree static-delta generate exited 1" in bench.render_report(results)


def test_only_make_times_within_the_noise_are_timed_again():
    assert make_rounds.close(22.4, 20.8) and make_rounds.close(20.8, 22.4)  # the platform pair's last bench
    assert not make_rounds.close(104.1, 191.2)  # the kernel pair's
    assert make_rounds.close(10.0, 12.5) and not make_rounds.close(10.0, 12.6)
