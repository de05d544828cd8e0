#!/usr/bin/env python3
"""`make bench`: our delta bundle next to the peer tools on three real pairs, in one run.

Pairs (each old/ -> new/ under $CORPUS, built once by the shared bench scripts when missing):
  platform   a Debian root filesystem before and after a real security update (platform.sh)
  kernel     two Debian kernel image packages unpacked (kernel.sh); every module path changes
  synthetic  a deterministic 2 GiB "installed games" tree and its next release (synth.py)
plus one big-file case for memory: a single 4 GiB file of random bytes and the same with 2 MiB
rewritten in the middle ($CORPUS/bigfile).

Per pair it measures `bundle make` and `bundle verify --base` (which applies: it builds and checks the
whole new tree) under `/usr/bin/time -v`, then the peers with ../shared/bench/peers.py (and, where our
make time and ostree's are too close to tell, both again in turns: make_rounds.py), and on the
platform pair the install floor (cp -a of the changed files + one SHA-256 pass over new), on the
synthetic pair the bytes no delta can avoid (its new game, `tar | xz -9e`). It writes
docs/BENCHMARKS.md and prints, last on stdout:

    bench: platform 0.NN, kernel 0.NN, synthetic 0.NN of the smallest peer; peak RSS N MiB

(our whole bundle's bytes / the bytes of the smallest peer that succeeded on the pair; the largest peak
RSS of any of our processes in the run). The goals are reported, never enforced: the run fails only
when one of our own steps fails; a peer that fails or times out is shown as such.

    tests/benchmarks/bench.py [--pairs platform,kernel,synthetic] [--no-bigfile] [--out FILE]
                              [--work DIR] [--keep] [--limit S] [--synthetic-size SIZE]
    tests/benchmarks/bench.py --report-only DIR [--out FILE]

Environment: CORPUS (default ~/.cache/bundle-corpus, like the bench scripts), BENCH (default
../shared/bench relative to the repository root), BUNDLE (the bundle command; default `bundle` on
PATH, else .venv/bin/bundle). Needs root to build the real pairs (debootstrap, chroot) and to install
the peer tools from Debian packages. A full run takes about an hour on 2 cores.
"""
import argparse
import datetime
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from tests.benchmarks import device_install, make_rounds  # noqa: E402  (after REPO is on the path)
MiB = 1 << 20
PAIRS = ("platform", "kernel", "synthetic")
SYNTH_SEED = "1"
BIGFILE_SEED = 1
# peers.py methods per pair. The "+renames" rows peers.py adds for the file-* methods on pairs whose
# paths differ in digits (the kernel pair) come on top.
PEER_METHODS = {
    "platform": ["file-zstd", "file-xdelta3", "file-bsdiff", "ostree", "tar-zstd-patch"],
    "kernel": ["file-zstd", "file-bsdiff", "ostree", "tar-zstd-patch"],
    "synthetic": ["file-zstd", "file-bsdiff", "ostree", "tar-zstd-patch", "tar-xdelta3-B"],
}
# Methods left out on a pair because peers.py cannot run them there in reasonable time, with why;
# shown in the report. Empty while every method above finishes within --limit.
PEER_METHODS_DROPPED = {"platform": {}, "kernel": {}, "synthetic": {}}
PEER_TOOLS = {"zstd": "zstd", "xdelta3": "xdelta3", "bsdiff": "bsdiff", "ostree": "ostree"}
BOUND_TOOLS = {"xz": "xz-utils"}  # the synthetic pair's unavoidable bytes (measure_new_content)
# The reference cabinet the device install runs on (device_install.py): a loop-mounted btrfs disk
# and the GRUB environment blocks.
CABINET_TOOLS = {"mkfs.btrfs": "btrfs-progs", "grub-editenv": "grub-common"}
GOAL_BYTES = {"platform": 0.6, "kernel": 0.8, "synthetic": 0.8}
GOAL_RSS_MIB = 256
GOAL_INSTALL_FACTOR = 1.5
# Our measured processes per pair: results key -> what the report calls it.
OUR_STEPS = {"make": "`bundle make`", "apply": "`bundle verify` (applies)",
             "install": "the device's install (`bundle-agent on-insert`)"}
PEER_NAMES = {
    "file-zstd": "per-file `zstd -19 --long=31 --patch-from`",
    "file-xdelta3": "per-file `xdelta3 -9 -S djw`",
    "file-bsdiff": "per-file `bsdiff`",
    "ostree": "`ostree static-delta generate --inline`",
    "tar-zstd-patch": "tar + `zstd -19 --long=31 --patch-from`",
    "tar-xdelta3-B": "tar + `xdelta3 -9 -S djw -B` (window = all of old.tar)",
}
PAIR_TEXT = {
    "platform": "`../shared/bench/platform.sh`: a Debian bookworm root filesystem (debootstrap minbase plus ~20 "
                "common packages) before and after a real security/point update from the Debian archive.",
    "kernel": "`../shared/bench/kernel.sh`: two Debian bookworm `linux-image-*-amd64` packages unpacked. The "
              "module directory is named after the kernel version, so nearly every path differs between old "
              "and new (the peers' `+renames` rows pair such files up by path with the digits ignored).",
    "synthetic": "`../shared/bench/synth.py --seed 1`: a deterministic tree of installed games (big asset "
                 "packs, media, executables, many small text files) and its next release with edits, "
                 "inserts, cuts, renames, deletions and a new game.",
}


class BenchError(Exception):
    """One of our own steps failed: names the step and where its log is."""


def log(msg):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# The report: pure over the JSON files of a results directory, so --report-only and the unit test
# (tests/test_bench_report.py) rebuild it without measuring anything.
# ---------------------------------------------------------------------------------------------------

def peer_succeeded(row):
    """A peer row counts for "smallest" only if it produced bytes and its apply step rebuilt new."""
    return row.get("bytes") is not None and not row.get("error")


def smallest_peer(rows):
    """The successful peer row with the fewest bytes, or None."""
    ok = [r for r in rows if peer_succeeded(r)]
    return min(ok, key=lambda r: r["bytes"]) if ok else None


def ratio_to_smallest(ours, peers):
    """Our whole bundle's bytes / the smallest successful peer's bytes, or None."""
    best = smallest_peer(peers["rows"])
    return ours["bytes_total"] / best["bytes"] if best else None


def our_peak_rss(results):
    """The largest peak RSS (MiB) of any of our measured processes in the run, or None."""
    runs = list(results["ours"].values()) + ([results["bigfile"]] if results.get("bigfile") else [])
    values = [ours[step]["rss_mib"] for ours in runs for step in OUR_STEPS]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def summary_line(results):
    """The one line `make bench` ends with."""
    parts = []
    for pair in results["pairs"]:
        ratio = ratio_to_smallest(results["ours"][pair], results["peers"][pair])
        parts.append(f"{pair} {'-' if ratio is None else f'{ratio:.2f}'}")
    rss = our_peak_rss(results)
    return (f"bench: {', '.join(parts)} of the smallest peer; "
            f"peak RSS {'-' if rss is None else f'{rss:.0f}'} MiB")


def load_results(results_dir):
    """Everything the report needs, from the JSON files one run wrote into results_dir.

    Raises BenchError when the directory holds no complete results."""
    def read(name):
        path = os.path.join(results_dir, name)
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise BenchError(f"report: cannot read {path}: {e} (is {results_dir} the results/ of a kept run?)")

    run = read("run.json")
    results = {"run": run, "pairs": run["pairs"], "ours": {}, "peers": {}, "bigfile": None, "floor": None}
    for pair in run["pairs"]:
        results["ours"][pair] = read(f"ours-{pair}.json")
        results["peers"][pair] = read(f"peers-{pair}.json")
    if os.path.exists(os.path.join(results_dir, "bigfile.json")):
        results["bigfile"] = read("bigfile.json")
    if os.path.exists(os.path.join(results_dir, "floor-platform.json")):
        results["floor"] = read("floor-platform.json")
    results["unavoidable"], results["rounds"] = {}, {}
    for pair in run["pairs"]:
        if os.path.exists(os.path.join(results_dir, f"unavoidable-{pair}.json")):
            results["unavoidable"][pair] = read(f"unavoidable-{pair}.json")
        if os.path.exists(os.path.join(results_dir, f"rounds-{pair}.json")):
            results["rounds"][pair] = read(f"rounds-{pair}.json")
    return results


def f1(x):
    return "-" if x is None else f"{x:.1f}"


def f0(x):
    return "-" if x is None else f"{x:.0f}"


def peer_label(method):
    base, _, suffix = method.partition("+")
    return PEER_NAMES.get(base, f"`{base}`") + (" + renames" if suffix == "renames" else "")


def pair_table(ours, peers):
    rows = [("**`bundle make` delta (this repository)**", ours["bytes_total"], ours["make"], ours["apply"], None),
            ("&nbsp;&nbsp;of which payload (`payload/*.vol`)", ours["bytes_payload"], None, None, None),
            ("&nbsp;&nbsp;installed on a cabinet (`bundle-agent on-insert`)", None, None, ours["install"], None)]
    mine = len(rows)
    for r in peers["rows"]:
        make = {"wall_s": r.get("make_s"), "rss_mib": r.get("make_rss_mb")}
        apply = {"wall_s": r.get("apply_s"), "rss_mib": r.get("apply_rss_mb")}
        rows.append((peer_label(r["method"]), r.get("bytes"), make, apply, r.get("error")))
    best = smallest_peer(peers["rows"])
    table = ["| method | bytes | MiB | ours / this | make wall s | make peak RSS MiB | apply wall s "
             "| apply peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i, (name, nbytes, make, apply, err) in enumerate(rows):
        if err:
            name += " (FAILED)" if nbytes is None else " (apply FAILED: not counted)"
        if best is not None and i >= mine and nbytes == best["bytes"] and not err:
            name += " **smallest peer**"
        b = "-" if nbytes is None else f"{nbytes:,}"
        mib = "-" if nbytes is None else f"{nbytes / MiB:.2f}"
        ratio = "-" if i < mine or nbytes is None or err else f"{ours['bytes_total'] / nbytes:.2f}"
        make = make or {}
        apply = apply or {}
        table.append(f"| {name} | {b} | {mib} | {ratio} | {f1(make.get('wall_s'))} | {f0(make.get('rss_mib'))} | "
                     f"{f1(apply.get('wall_s'))} | {f0(apply.get('rss_mib'))} |")
    return table


def holds(ok):
    return "-" if ok is None else ("yes" if ok else "**no**")


def goal_rows(results):
    """(goal, measured, holds) for every goal of the issue, from the measured values."""
    goals = []
    for pair in results["pairs"]:
        ours, peers = results["ours"][pair], results["peers"][pair]
        ratio = ratio_to_smallest(ours, peers)
        best = smallest_peer(peers["rows"])
        limit = GOAL_BYTES[pair]
        measured = "no peer succeeded" if ratio is None else f"{ratio:.2f}x ({best['method']})"
        _, bound = unavoidable_bound(results, pair)
        if bound is not None:
            measured += f"; the new content alone needs {bound:.2f}x (see the pair)"
        goals.append((f"{pair}: bytes <= {limit}x the smallest peer", measured,
                      None if ratio is None else ratio <= limit))
    cases = [(pair, results["ours"][pair]) for pair in results["pairs"]]
    if results.get("bigfile"):
        cases.append(("4 GiB file" if results["bigfile"]["size"] == 4 << 30 else
                      f"{results['bigfile']['size'] / MiB:.0f} MiB file", results["bigfile"]))
    for step, what in OUR_STEPS.items():
        for name, ours in cases:
            rss = ours[step]["rss_mib"]
            goals.append((f"{name}: {what} peak RSS <= {GOAL_RSS_MIB} MiB", f"{f0(rss)} MiB",
                          None if rss is None else rss <= GOAL_RSS_MIB))
    for pair in results["pairs"]:
        goals.append((f"{pair}: `bundle make` wall <= `ostree static-delta generate`", *make_time_goal(results, pair)))
    floor = results.get("floor")
    if floor and "platform" in results["ours"]:
        install = results["ours"]["platform"]["install"]["wall_s"]
        factor = install / floor["floor_s"] if floor["floor_s"] else None
        measured = f"{install:.1f} s vs floor {floor['floor_s']:.1f} s = " + ("-" if factor is None else f"{factor:.2f}x")
        on_cabinet = results["ours"]["platform"]["install"].get("cabinet_floor")
        if on_cabinet and on_cabinet["floor_s"]:
            measured += (f" (the floor on the cabinet's disk: {on_cabinet['floor_s']:.1f} s = "
                         f"{install / on_cabinet['floor_s']:.2f}x)")
        goals.append((f"platform: install <= {GOAL_INSTALL_FACTOR}x the floor", measured,
                      None if factor is None else factor <= GOAL_INSTALL_FACTOR))
    return goals


def ostree_row(results, pair):
    """peers.py's ostree row of the pair if ostree made and applied its delta, else None."""
    row = next((r for r in results["peers"][pair]["rows"] if r["method"] == "ostree"), None)
    return row if row is not None and peer_succeeded(row) and row.get("make_s") is not None else None


def make_time_goal(results, pair):
    """(measured, holds) for the make-time goal: on the medians of the rounds in turns where the
    single samples were too close to tell (tests/benchmarks/make_rounds.py), else on those."""
    ours = results["ours"][pair]["make"]["wall_s"]
    ostree = ostree_row(results, pair)
    if ostree is None:
        return f"{f1(ours)} s; ostree did not succeed", None
    single = f"{f1(ours)} s vs {f1(ostree['make_s'])} s"
    rounds = results["rounds"].get(pair, {})
    if not rounds.get("rounds"):
        why = f"; timing them again in turns failed: {rounds['error']}" if rounds.get("error") else ""
        return single + why, ours <= ostree["make_s"]
    ours_median, ostree_median = make_rounds.medians(rounds["rounds"])
    return (f"{f1(ours_median)} s vs {f1(ostree_median)} s, medians of {len(rounds['rounds'])} runs each in turns "
            f"(single runs: {single})", ours_median <= ostree_median)


def rounds_text(results, pair):
    """The rounds in turns of the pair, if it had them."""
    rounds = results["rounds"].get(pair)
    if not rounds:
        return []
    lines = ["", textwrap.fill(
        "**`bundle make` and `ostree static-delta generate` in turns.** The two single make times above were "
        f"within {make_rounds.CLOSE}x of each other, a gap smaller than one tool's spread from run to run on this "
        "machine, so both were timed again in turns on the same warm trees (ostree's repository committed once, not "
        "timed); the make-time goal is held on the medians.", width=110)]
    if not rounds.get("rounds"):
        return lines + ["", f"Timing them again in turns failed: {rounds['error']}"]
    lines += ["", "| round | first | `bundle make` s | bytes | `ostree static-delta generate` s | bytes |",
              "|---:|---|---:|---:|---:|---:|"]
    for number, r in enumerate(rounds["rounds"], 1):
        lines.append(f"| {number} | {r['first']} | {f1(r['ours_s'])} | {r['ours_bytes']:,} | {f1(r['ostree_s'])} | "
                     f"{r['ostree_bytes']:,} |")
    ours_median, ostree_median = make_rounds.medians(rounds["rounds"])
    return lines + [f"| **median** | | **{f1(ours_median)}** | | **{f1(ostree_median)}** | |"]


def unavoidable_bound(results, pair):
    """(what no delta of the pair can avoid carrying, those bytes over the smallest peer's), each
    None when not measured or no peer succeeded: content that is nowhere in old (the synthetic
    tree's new game, added files and random bytes written into changed files, known from synth.py's
    changes.json), at its smallest."""
    unavoidable = results.get("unavoidable", {}).get(pair)
    best = smallest_peer(results["peers"][pair]["rows"])
    if not unavoidable or best is None:
        return unavoidable, None
    return unavoidable, unavoidable["least_bytes"] / best["bytes"]


def unavoidable_text(results, pair):
    unavoidable, bound = unavoidable_bound(results, pair)
    if not unavoidable:
        return []
    goal = GOAL_BYTES[pair]
    parts = ([f"the new game `{unavoidable['new_game']}`"] if unavoidable["new_game"] else []) + \
        ([f"{unavoidable['added_files']:,} files added to other games"] if unavoidable["added_files"] else [])
    text = (f"**Bytes no delta can avoid.** Content that is nowhere in old (synth.py writes each file from its own "
            f"random stream): {' and '.join(parts)}, {unavoidable['files']:,} files and {unavoidable['bytes']:,} "
            f"bytes, which `{unavoidable['compressor']}` compresses to {unavoidable['compressed_bytes']:,} bytes at "
            f"the least; and the {unavoidable['written_random_bytes']:,} random bytes that edits, insertions and "
            f"appends wrote into changed files, which nothing compresses. Together "
            f"{unavoidable['least_bytes']:,} bytes.")
    if bound is not None:
        text += (f" That is {bound:.2f}x the smallest peer by itself, so a bundle of this pair is at least "
                 f"{bound:.2f}x " + (f"and the {goal}x goal cannot be met on this tree." if bound > goal else
                                     f"(the goal is {goal}x)."))
    return ["", textwrap.fill(text, width=110)]


def where_the_bytes_go(pair, ours):
    total = ours["bytes_total"]
    lines = [
        "| part of the bundle | bytes |",
        "|---|---:|",
        f"| `manifest.json.zst` (full listing of the new tree + object index; {ours['manifest_raw_bytes']:,} bytes "
        f"uncompressed, {ours['manifest_entries']:,} entries) | {ours['bytes_manifest']:,} |",
        f"| signature(s) (`*.minisig`) | {ours['bytes_signatures']:,} |",
        f"| payload volume(s) (`payload/*.vol`) | {ours['bytes_payload']:,} |",
    ] + ([f"| other files | {ours['bytes_other']:,} |"] if ours["bytes_other"] else []) + [
        f"| **total** | **{total:,}** |",
        "",
        f"The manifest is {ours['bytes_manifest'] / total * 100 if total else 0:.0f}% of the bundle.",
        "",
        "| kind | files | MiB in new | stored bytes |",
        "|---|---:|---:|---:|",
    ]
    comp = ours["component"]
    for kind in ("changed", "added", "moved", "unchanged"):
        k = comp["files"].get(kind)
        if k:
            lines.append(f"| {kind} | {k['files']:,} | {k['bytes'] / MiB:.1f} | {k['stored_bytes']:,} |")
    largest = comp.get("largest_changes", [])
    if largest:
        top = sum(c["stored_bytes"] for c in largest)
        lines += ["", f"The {len(largest)} largest changes take {top:,} stored bytes "
                      f"({top / comp['stored_bytes'] * 100 if comp.get('stored_bytes') else 0:.0f}% of the "
                      f"component's {comp.get('stored_bytes', 0):,}):", "",
                  "| path | kind | new size | stored bytes | stored / size | note |",
                  "|---|---|---:|---:|---:|---|"]
        for c in largest:
            note = ("ELF" if c.get("elf") else "") + (", gzip recipe" if c.get("gzip_recipe") else "")
            lines.append(f"| `{c['path']}` | {c['kind']} | {c['size']:,} | {c['stored_bytes']:,} | "
                         f"{c['stored_bytes'] / c['size'] * 100 if c['size'] else 0:.1f}% | {note.strip(', ')} |")
    if ours.get("gz_stored"):
        lines += ["", textwrap.fill(
            f"Of the {ours['gz_stored']} `.gz` files the bundle stores bytes for, {ours['gz_recipe']} re-deflate bit "
            "for bit and are carried as a delta of their uncompressed content plus a recipe; the others are stored "
            "as compressed bytes (as a delta if changed), and cost almost their full size: a change early in a "
            "compressed stream changes most of the compressed bytes after it.", width=110)]
    return lines


def missing_pairs_note(results):
    """A line naming the pairs of `make bench` this run left out (a `--pairs` run), if any."""
    missing = [pair for pair in PAIRS if pair not in results["pairs"]]
    if not missing:
        return []
    return [f"**This run measured only: {', '.join(p for p in PAIRS if p in results['pairs'])}.** Not measured: "
            f"{', '.join(missing)} (a `--pairs` run; `make bench` measures all three).", ""]


def render_report(results):
    """The Markdown of docs/BENCHMARKS.md."""
    run = results["run"]
    m = run["machine"]
    versions = run.get("peer_versions", {})
    lines = [
        "# Benchmarks",
        "",
        "Delta bundles for real updates, next to the tools people already use for the job, all measured in",
        "one run on one machine. Produced by `tests/benchmarks/bench.py` (`make bench`); do not edit the numbers",
        "by hand, rerun it.",
        "",
        *missing_pairs_note(results),
        f"- Date: {run['date']}",
        f"- Machine: {m['cpus']} cores, {m['cpu_model']}, {m['mem_gib']:.1f} GiB RAM, Linux {m['kernel']}",
        f"- bundle {run['bundle_version']}, {run['python_version']}, zstandard {run['zstandard']}",
        "- Peers (Debian packages): " + ", ".join(f"{t} {v}" for t, v in versions.items()),
        "",
        "## Summary",
        "",
        "```",
        summary_line(results),
        "```",
        "",
        "Each ratio is our whole bundle's bytes over the bytes of the smallest peer that succeeded on the pair",
        "(made its delta and rebuilt new from it); peak RSS is the largest of any of our processes in the run",
        "(`bundle make`, `bundle verify` and the device's install, every pair and the big-file case).",
        "",
        "## Goals",
        "",
        "Reported, not enforced: the run does not fail on them.",
        "",
        "| goal | measured | holds |",
        "|---|---|---|",
    ]
    lines += [f"| {goal} | {measured} | {holds(ok)} |" for goal, measured, ok in goal_rows(results)]
    lines += [
        "",
        "## How each row is measured",
        "",
        "Bytes are what has to be carried to the machine. For our bundle that is the whole bundle directory:",
        "compressed manifest, its signature and the payload volume(s). Wall times are seconds; peak RSS is the",
        "largest single process of the step (`/usr/bin/time -v`). `bundle make` runs with its default of 2",
        "threads, the per-file peers with 2 workers. \"ours / this\" is our bundle's bytes over the row's.",
        "Both trees of a pair are read once before our steps and again before the peers', so every tool",
        "starts from a warm page cache.",
        "",
        "- **bundle make**: `bundle make --release new.toml --base old.toml --key ... --out ... --drop-xattrs`",
        "  (zstd level 19, default options; one component `platform` whose path is the whole tree;",
        "  `--drop-xattrs`: the platform pair's `var/log/journal` has POSIX ACLs, which bundles do not carry and",
        "  ostree does, a few bytes). Apply: `bundle verify BUNDLE",
        "  --root root.json --base platform=OLD --work-dir ...`, which checks the signatures and every stored",
        "  byte, builds the complete new tree from old plus the payload in a scratch directory with the device's",
        "  apply engine, and checks every entry of the new tree (SHA-256 of every file, modes, owners, links)",
        "  against the signed manifest.",
        "- **installed on a cabinet**: what a device does when the stick goes in, on the reference cabinet's",
        "  backend (grub-btrfs, docs/DEVICE.md) on a loop-mounted btrfs image: a full bundle of old (level 3)",
        "  provisions environment env-1 through `bundle-agent provision`; `bundle write` puts the delta on a",
        "  stick; then `bundle-agent on-insert STICK` is timed: it verifies the signatures and every stored",
        "  byte, snapshots env-1 as env-2, updates env-2 in place (only what changed is written), checks",
        "  every entry of env-2 against the signed manifest (SHA-256 of every file) and arms the trial boot.",
        "- The peers are run by `../shared/bench/peers.py`; a row marked FAILED failed or ran out of its time",
        f"  limit ({run.get('peer_limit_s') or 'peers.py default'} s per step) and is not counted as smallest.",
        "  Per-pair details and each peer's exact command follow the tables.",
        "- **make time against ostree**: where our single `bundle make` time and ostree's are within "
        f"{make_rounds.CLOSE}x of",
        f"  each other, both are timed again in turns, {make_rounds.ROUNDS} times each, and the goal is held on "
        "the medians",
        "  (see the pair).",
        "",
        "**What our bytes include that the peers' do not.** The per-file peers count only the delta files: no",
        "listing of paths, modes, owners, symlinks, hard links or removals, no checksums, no signature. Our",
        "bundle carries a signed, compressed listing of the complete new tree with a SHA-256 for every file.",
        "`ostree static-delta` is the closest peer in scope (it also carries the metadata of the new commit),",
        "but it is not signed here and its apply step stores objects in a repository rather than building a",
        "checked tree.",
        "",
        "**Apply times are not like for like.** The per-file peers rebuild only the changed and added files",
        "and check nothing; our `bundle verify` builds the whole new tree and hashes every file of it, and the",
        "install on a cabinet writes only what changed but hashes every file of the new environment. The",
        "platform pair's install floor below is the yardstick for the install.",
    ]
    for pair in results["pairs"]:
        ours, peers = results["ours"][pair], results["peers"][pair]
        tree = peers["tree"]
        loads = ours.get("make_load1") or []
        peer_loads = [r["make_load1"] for r in peers["rows"] if r.get("make_load1") is not None]
        lines += [
            "",
            f"## Pair `{pair}`",
            "",
            textwrap.fill(PAIR_TEXT[pair], width=110),
            "",
            f"- old: {tree['old_files']:,} files, {tree['old_bytes'] / MiB:.1f} MiB; new: {tree['new_files']:,} "
            f"files, {tree['new_bytes'] / MiB:.1f} MiB (sums of regular files)",
            f"- {tree['files_changed']:,} files changed at the same path, {tree['files_added']:,} added, "
            f"{tree['files_removed']:,} removed (path comparison by the bench scripts)",
            "",
            *pair_table(ours, peers),
            "",
            textwrap.fill(
                "1-minute load average around the make steps (2 cores: above ~2 means something else competed "
                "for the CPU): ours " + (f"{min(loads):.1f}-{max(loads):.1f}" if loads else "?") + ", peers "
                + (f"{min(peer_loads):.1f}-{max(peer_loads):.1f}" if peer_loads else "?") + ". Our apply step's "
                f"scratch space is {ours.get('work_fs') or '?'} (the apply engine reflinks unchanged files on btrfs "
                "and xfs and copies them elsewhere).", width=110),
        ]
        for method, why in (ours.get("peers_dropped") or {}).items():
            lines.append(f"- `{method}` not run on this pair: {why}")
        lines += ["", "Peers:", ""]
        for r in peers["rows"]:
            lines.append(textwrap.fill(f"- **{r['method']}**: {r['detail']}"
                                       + (f" **Error:** {r['error']}" if r.get("error") else ""),
                                       width=110, subsequent_indent="  ", break_on_hyphens=False))
        lines += rounds_text(results, pair)
        lines += unavoidable_text(results, pair)
        lines += ["", "**Where the bytes go** (`bundle inspect BUNDLE --json`; an object shared by several files "
                      "counts for each of them):", "", *where_the_bytes_go(pair, ours)]
    floor = results.get("floor")
    if floor:
        install = results["ours"]["platform"]["install"]["wall_s"]
        lines += [
            "",
            "## Install floor (platform pair)",
            "",
            textwrap.fill(
                "What installing the platform update cannot go below on this machine: copying the files whose "
                "content differs from old (changed and added, per path) with `cp -a` into a scratch directory, "
                "plus one SHA-256 pass over the whole new tree (`find new -type f -print0 | xargs -0 sha256sum`). "
                "Both are timed in the same run, after our apply step, so both see the same warm page cache.",
                width=110),
            "",
            "| step | files | MiB | wall s |",
            "|---|---:|---:|---:|",
            f"| `cp -a` of changed + added files | {floor['copied_files']:,} | {floor['copied_bytes'] / MiB:.1f} | "
            f"{floor['copy_s']:.1f} |",
            f"| SHA-256 of every file of new | {floor['hashed_files']:,} | {floor['hashed_bytes'] / MiB:.1f} | "
            f"{floor['hash_s']:.1f} |",
            f"| **floor** | | | **{floor['floor_s']:.1f}** |",
            f"| our install (`bundle-agent on-insert` on a cabinet) | | | {install:.1f} |",
        ]
        on_cabinet = results["ours"]["platform"]["install"].get("cabinet_floor")
        if on_cabinet:
            lines += [
                "",
                textwrap.fill(
                    "The same floor on the cabinet's own disk, where the install runs (loop-mounted btrfs, "
                    "tests/benchmarks/device_install.py), right after it: a snapshot of the running environment, "
                    "the same files copied over it with `cp -a --remove-destination`, one SHA-256 pass over the "
                    "snapshot's files (other inodes than the running environment's, so not in the page cache, as "
                    "the files the agent checks are not), and `sync`, which the agent does too. The goal is held "
                    "against the floor above, as the issue defines it.", width=110),
                "",
                "| step on the cabinet's disk | wall s |",
                "|---|---:|",
                f"| `cp -a` of changed + added files over a snapshot of the running environment | "
                f"{on_cabinet['copy_s']:.1f} |",
                f"| SHA-256 of every file of the snapshot | {on_cabinet['hash_s']:.1f} |",
                f"| `sync` | {on_cabinet['sync_s']:.1f} |",
                f"| **floor on the cabinet's disk** | **{on_cabinet['floor_s']:.1f}** |",
                f"| our install | {install:.1f} |",
            ]
    big = results.get("bigfile")
    if big:
        lines += [
            "",
            "## One big file",
            "",
            textwrap.fill(
                f"old = one {big['size'] / MiB:,.0f} MiB file of random bytes (Python random.Random({BIGFILE_SEED}), "
                f"1 MiB pieces), new = the same with {big['rewritten'] / MiB:.0f} MiB rewritten in the middle. "
                "Memory must not grow with the file.", width=110),
            "",
            "| step | wall s | peak RSS MiB |",
            "|---|---:|---:|",
            f"| `bundle make` | {f1(big['make']['wall_s'])} | {f0(big['make']['rss_mib'])} |",
            f"| `bundle verify --base` | {f1(big['apply']['wall_s'])} | {f0(big['apply']['rss_mib'])} |",
            f"| `bundle-agent on-insert` on a cabinet | {f1(big['install']['wall_s'])} | "
            f"{f0(big['install']['rss_mib'])} |",
            "",
            f"Bundle: {big['bytes_total']:,} bytes.",
        ]
    lines += [
        "",
        "## How to reproduce",
        "",
        "As root (building the real pairs needs debootstrap and chroot, the peers are installed from Debian",
        "packages):",
        "",
        "```sh",
        "make bench                                           # = tests/benchmarks/bench.py, venv first on PATH",
        "tests/benchmarks/bench.py --out draft.md --keep      # report to draft.md, keep the scratch dir",
        "tests/benchmarks/bench.py --report-only DIR --out draft.md   # rebuild the report from a kept run",
        "```",
        "",
        "Pairs are built once into `$CORPUS/<pair>/{old,new}` (`$CORPUS` defaults to `~/.cache/bundle-corpus`);",
        "the platform pair takes about 10 minutes the first time, the 2 GiB synthetic tree and the 4 GiB file a",
        "few minutes each. A run then takes about an hour on 2 cores, most of it the peers on the synthetic tree.",
        "Numbers from different machines or runs are not comparable: compare rows of one run.",
        "",
    ]
    return "\n".join(lines)


def write_report(results_dir, out_path):
    """Writes the report from results_dir to out_path and returns the `bench:` line."""
    results = load_results(results_dir)
    text = render_report(results)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        f.write(text)
    log(f"wrote {out_path}")
    return summary_line(results)


# ---------------------------------------------------------------------------------------------------
# The measurement.
# ---------------------------------------------------------------------------------------------------

def parse_time(path):
    """Wall seconds and peak RSS (MiB) from a `/usr/bin/time -v` report."""
    with open(path) as f:
        txt = f.read()
    wall = rss = None
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", txt)
    if m:
        wall = sum(float(v) * 60 ** i for i, v in enumerate(reversed(m.group(1).split(":"))))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt)
    if m:
        rss = int(m.group(1)) / 1024
    return {"wall_s": wall, "rss_mib": rss}


def run_timed(step, cmd, log_base, cwd=None, ok=(0,)):
    """Runs one of OUR steps under /usr/bin/time -v; output to LOG_BASE.log, timing to LOG_BASE.time.
    Returns the wall seconds, the peak RSS and the exit code.

    Raises BenchError naming the step and its log when it exits with a code not in ``ok`` (any
    code when ``ok`` is None: a peer's step, whose failure the caller reports)."""
    with open(log_base + ".log", "wb") as out:
        p = subprocess.run(["/usr/bin/time", "-v", "-o", log_base + ".time", *cmd], stdout=out,
                           stderr=subprocess.STDOUT, cwd=cwd)
    if ok is not None and p.returncode not in ok:
        with open(log_base + ".log", "rb") as f:
            tail = f.read()[-3000:].decode(errors="replace")
        sys.stderr.write(tail)
        raise BenchError(f"{step} failed (exit {p.returncode}): {shlex.join(map(str, cmd))}; log: {log_base}.log")
    return {**parse_time(log_base + ".time"), "exit": p.returncode}


def run_script(step, cmd, log_path):
    """Runs a helper (pair build, peers.py) with its output to log_path; raises BenchError on failure."""
    with open(log_path, "ab") as out:
        p = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise BenchError(f"{step} failed (exit {p.returncode}): {shlex.join(map(str, cmd))}; log: {log_path}")


def files_bytes(root, pattern=None):
    total = 0
    for dp, _, names in os.walk(root):
        for name in names:
            p = os.path.join(dp, name)
            if os.path.isfile(p) and not os.path.islink(p) and (pattern is None or re.search(pattern, name)):
                total += os.path.getsize(p)
    return total


def first_line(cmd):
    try:
        p = subprocess.run(cmd, shell=isinstance(cmd, str), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=30)
        lines = p.stdout.decode(errors="replace").strip().splitlines()
        return lines[0].strip() if lines else "?"
    except (OSError, subprocess.SubprocessError) as e:
        return f"? ({e})"


def short_version(text):
    m = re.search(r"v?(\d+(?:[.\-]\d+)+\S*)", text or "")
    return m.group(1).rstrip("',") if m else (text or "?")


class Bench:
    def __init__(self, args, bench_dir, corpus, bundle):
        self.args, self.bench_dir, self.corpus, self.bundle = args, bench_dir, corpus, bundle
        self.work = None
        self.results = None

    # --- set-up ---------------------------------------------------------------------------------
    def need_tool(self, command, package):
        """The peer tools come from the machine's Debian package sources when missing."""
        if shutil.which(command):
            return
        if os.geteuid() != 0:
            raise BenchError(f"{command} is missing: install Debian package {package} or run as root")
        log(f"installing Debian package {package} (for {command})")
        p = subprocess.run(["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=600", "install", package],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if p.returncode != 0:
            raise BenchError(f"could not install {package} (apt-get install {package}): "
                             f"{p.stderr.decode(errors='replace').strip()[-300:]}")

    def ensure_pair(self, pair):
        """Builds $CORPUS/<pair> with the shared scripts when it is missing (they are idempotent but
        kernel.sh runs apt-get update first, so a built pair is not handed to them again)."""
        pair_dir = os.path.join(self.corpus, pair)
        logs = os.path.join(self.work, "logs")
        if pair == "synthetic":
            key = f"synth.py --size {self.args.synthetic_size} --seed {SYNTH_SEED}"
            if self.stamp(pair_dir) != key or not self.has_trees(pair_dir):
                log(f"synthetic pair: building {self.args.synthetic_size} into {pair_dir} (synth.py)")
                run_script("synthetic pair (synth.py)",
                           [sys.executable, os.path.join(self.bench_dir, "synth.py"), pair_dir,
                            "--size", self.args.synthetic_size, "--seed", SYNTH_SEED, "--force"],
                           os.path.join(logs, "pair-synthetic.log"))
                self.write_stats(pair_dir, logs)
                with open(os.path.join(pair_dir, ".done"), "w") as f:
                    f.write(key + "\n")
        elif self.stamp(pair_dir) is None or not self.has_trees(pair_dir):
            log(f"{pair} pair: building into {pair_dir} ({pair}.sh; minutes)")
            run_script(f"{pair} pair ({pair}.sh)", ["bash", os.path.join(self.bench_dir, f"{pair}.sh")],
                       os.path.join(logs, f"pair-{pair}.log"))
        if not self.has_trees(pair_dir):
            raise BenchError(f"{pair} pair: {pair_dir}/old and new are missing after building it")
        if not os.path.exists(os.path.join(pair_dir, "STATS.json")):  # peers.py reads it
            self.write_stats(pair_dir, logs)
        return os.path.join(pair_dir, "old"), os.path.join(pair_dir, "new")

    @staticmethod
    def stamp(pair_dir):
        try:
            with open(os.path.join(pair_dir, ".done")) as f:
                return f.read().strip()
        except OSError:
            return None

    @staticmethod
    def has_trees(pair_dir):
        return all(os.path.isdir(os.path.join(pair_dir, side)) for side in ("old", "new"))

    def write_stats(self, pair_dir, logs):
        with open(os.path.join(pair_dir, "STATS.txt"), "w") as out:
            p = subprocess.run([sys.executable, os.path.join(self.bench_dir, "treestats.py"),
                                os.path.join(pair_dir, "old"), os.path.join(pair_dir, "new"),
                                "--json", os.path.join(pair_dir, "STATS.json")], stdout=out,
                               stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise BenchError(f"treestats.py failed on {pair_dir}: {p.stderr.decode(errors='replace').strip()}")

    def ensure_bigfile(self):
        """$CORPUS/bigfile/{old,new}/asset.pak: random bytes, new with the middle rewritten. Built once."""
        size = self.args.bigfile_size
        rewritten = min(2 * MiB, size // 2)
        base = os.path.join(self.corpus, "bigfile")
        key = f"random.Random({BIGFILE_SEED}) size {size} rewritten {rewritten}"
        if self.stamp(base) == key and self.has_trees(base):
            return base, size, rewritten
        log(f"big file: writing {size / MiB:.0f} MiB old and new into {base}")
        shutil.rmtree(base, ignore_errors=True)
        for side in ("old", "new"):
            os.makedirs(os.path.join(base, side))
        rng, rng_new = random.Random(BIGFILE_SEED), random.Random(BIGFILE_SEED + 1)
        pieces = math.ceil(size / MiB)
        first = (pieces - rewritten // MiB) // 2
        middle = range(first, first + max(1, rewritten // MiB))
        with open(os.path.join(base, "old", "asset.pak"), "wb") as old, \
                open(os.path.join(base, "new", "asset.pak"), "wb") as new:
            for i in range(pieces):
                n = min(MiB, size - i * MiB)
                piece = rng.randbytes(n)
                old.write(piece)
                new.write(rng_new.randbytes(n) if i in middle else piece)
        with open(os.path.join(base, ".done"), "w") as f:
            f.write(key + "\n")
        return base, size, rewritten

    def make_work(self):
        if self.args.work:
            work = self.args.work
            if os.path.exists(work) and os.listdir(work):
                raise BenchError(f"--work {work} exists and is not empty: give a new or empty directory")
            os.makedirs(work, exist_ok=True)
        else:
            os.makedirs(os.path.join(self.corpus, "_work"), exist_ok=True)
            work = tempfile.mkdtemp(prefix="bench.", dir=os.path.join(self.corpus, "_work"))
        self.work = os.path.abspath(work)
        self.results = os.path.join(self.work, "results")
        for d in ("results", "logs"):
            os.makedirs(os.path.join(self.work, d), exist_ok=True)
        log(f"scratch: {self.work}")

    def make_keys(self):
        """Throwaway release and root keys and a signed trust root for this run."""
        keys = os.path.join(self.work, "keys")
        root = os.path.join(self.work, "root.json")
        for cmd in (["keys", "new", "release", "--dir", keys, "--no-passphrase"],
                    ["keys", "new", "root", "--dir", keys, "--no-passphrase"],
                    ["root", "new", "--out", root, "--root-key", f"{keys}/root.pub", "--signer", f"{keys}/release.pub"],
                    ["root", "sign", root, "--key", f"{keys}/root.key"]):
            p = subprocess.run([self.bundle, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if p.returncode != 0:
                raise BenchError(f"trust root set-up failed: bundle {shlex.join(cmd)}: "
                                 f"{p.stderr.decode(errors='replace').strip()}")
        return os.path.join(keys, "release.key"), root

    # --- our steps --------------------------------------------------------------------------------
    def measure_ours(self, name, old, new, key, root):
        """bundle make + bundle verify --base for old -> new; returns the numbers for the report."""
        d = os.path.join(self.work, name)
        os.makedirs(d)
        warm_page_cache(name, old, new)
        for seq, tree, side in ((1, old, "old"), (2, new, "new")):
            with open(os.path.join(d, f"{side}.toml"), "w") as f:
                f.write(f'product = "bench"\nhardware = ["x86-64"]\n\n[components.platform]\n'
                        f"path = {json.dumps(os.path.abspath(tree))}\nversion = \"{seq}\"\nsequence = {seq}\n")
        bundle_dir = os.path.join(d, "bundle")
        log(f"{name}: bundle make (delta old -> new)")
        load_before = os.getloadavg()[0]
        make = run_timed(f"{name}: bundle make",
                         [self.bundle, "make", "--release", f"{d}/new.toml", "--base", f"{d}/old.toml",
                          "--key", key, "--out", bundle_dir, "--drop-xattrs"], os.path.join(d, "make"))
        load_after = os.getloadavg()[0]
        apply_dir = os.path.join(d, "apply")
        os.makedirs(apply_dir)
        log(f"{name}: bundle verify --base (apply into scratch and check every file)")
        apply = run_timed(f"{name}: bundle verify --base",
                          [self.bundle, "verify", bundle_dir, "--root", root, "--base", f"platform={old}",
                           "--work-dir", apply_dir], os.path.join(d, "verify"))
        shutil.rmtree(apply_dir, ignore_errors=True)
        install = self.measure_install(name, old, new, key, root,
                                       changed_files(old, new)[0] if name == "platform" else None)
        total = files_bytes(bundle_dir)
        log(f"{name}: ours {total:,} bytes, make {make['wall_s']:.1f} s / {make['rss_mib']:.0f} MiB, "
            f"apply {apply['wall_s']:.1f} s / {apply['rss_mib']:.0f} MiB, "
            f"install {install['wall_s']:.1f} s / {install['rss_mib']:.0f} MiB")
        return bundle_dir, {"bytes_total": total, "make": make, "apply": apply, "install": install,
                            "make_load1": [round(load_before, 2), round(load_after, 2)]}

    def measure_install(self, name, old, new, key, root, changed=None):
        """The delta installed as a cabinet installs it (tests/benchmarks/device_install.py); with
        ``changed``, the install floor on the cabinet's disk too."""
        work = os.path.join(self.work, name, "device")
        os.makedirs(work)
        log(f"{name}: device install: bundles, a provisioned btrfs cabinet, then bundle-agent on-insert")
        try:
            install = device_install.measure(Path(work), Path(old), Path(new), self.bundle, Path(key), Path(root),
                                             run_timed, changed)
        except RuntimeError as e:
            raise BenchError(f"{name}: device install: {e}")
        shutil.rmtree(work, ignore_errors=True)
        return install

    def describe_bundle(self, pair, bundle_dir, new):
        """Where the bytes go: parts of the bundle directory, `bundle inspect --json`, gzip recipes."""
        p = subprocess.run([self.bundle, "inspect", bundle_dir, "--json"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise BenchError(f"{pair}: bundle inspect failed: {p.stderr.decode(errors='replace').strip()}")
        inspect = json.loads(p.stdout)
        with open(os.path.join(self.work, pair, "inspect.json"), "wb") as f:
            f.write(p.stdout)
        manifest_zst = os.path.join(bundle_dir, "manifest.json.zst")
        raw = subprocess.run(["zstd", "-q", "-dc", manifest_zst], stdout=subprocess.PIPE, check=True).stdout
        manifest = json.loads(raw)
        entries = [e for c in manifest["components"] for e in c["entries"]]
        by_path = {e["path"]: e for e in entries}
        total = files_bytes(bundle_dir)
        payload = files_bytes(os.path.join(bundle_dir, "payload"), r"\.vol$")
        signatures = files_bytes(bundle_dir, r"\.minisig$")
        manifest_bytes = os.path.getsize(manifest_zst)
        comp = inspect["components"][0]
        largest = []
        for c in comp.get("largest_changes", []):
            try:
                with open(os.path.join(new, c["path"]), "rb") as f:
                    elf = f.read(4) == b"\x7fELF"
            except OSError:
                elf = False
            largest.append({**c, "elf": elf, "gzip_recipe": "gzip" in by_path.get(c["path"], {})})
        return {
            "bytes_payload": payload, "bytes_manifest": manifest_bytes, "bytes_signatures": signatures,
            "bytes_other": total - payload - manifest_bytes - signatures,
            "manifest_raw_bytes": len(raw), "manifest_entries": sum(c["entries"] for c in inspect["components"]),
            "component": {"files": comp.get("files", {}), "stored_bytes": comp.get("stored_bytes"),
                          "largest_changes": largest},
            "gz_stored": sum(1 for e in entries if e["path"].endswith(".gz") and e.get("chunks")),
            "gz_recipe": sum(1 for e in entries if "gzip" in e),
        }

    def measure_floor(self, old, new):
        """The platform install floor: cp -a of the files whose content differs + SHA-256 over new."""
        d = os.path.join(self.work, "floor")
        os.makedirs(d)
        changed, copied_bytes = changed_files(old, new)
        list_path = os.path.join(d, "changed.list")
        with open(list_path, "wb") as f:
            f.write(b"".join(os.fsencode(r) + b"\0" for r in changed))
        dest = os.path.join(d, "copy")
        os.makedirs(dest)
        log(f"platform: install floor: cp -a of {len(changed):,} changed+added files, SHA-256 of new")
        copy_cmd = f"xargs -0 -r -a {shlex.quote(list_path)} cp -a --parents -t {shlex.quote(dest)}"
        copy = run_timed("install floor: cp -a", ["bash", "-c", copy_cmd], os.path.join(d, "copy"), cwd=new)
        hashed = run_timed("install floor: sha256sum",
                           ["bash", "-c", f"find {shlex.quote(new)} -type f -print0 | xargs -0 sha256sum >/dev/null"],
                           os.path.join(d, "hash"))
        hashed_files, hashed_bytes = 0, 0
        for dp, _, names in os.walk(new):
            for name in names:
                p = os.path.join(dp, name)
                if os.path.isfile(p) and not os.path.islink(p):
                    hashed_files += 1
                    hashed_bytes += os.path.getsize(p)
        shutil.rmtree(dest, ignore_errors=True)
        return {"copied_files": len(changed), "copied_bytes": copied_bytes, "copy_s": copy["wall_s"],
                "hashed_files": hashed_files, "hashed_bytes": hashed_bytes, "hash_s": hashed["wall_s"],
                "floor_s": copy["wall_s"] + hashed["wall_s"]}

    def measure_new_content(self, pair_dir):
        """What of the synthetic release is nowhere in old (synth.py's changes.json): the new game
        and the files added to other games, tarred and compressed as hard as we know (xz -9e, one
        thread: no block splitting), plus the random bytes that edits, insertions and appends
        wrote into changed files, which nothing compresses. The least any delta carries for it.
        None when the tree has neither a new game nor added files."""
        with open(os.path.join(pair_dir, "changes.json")) as f:
            changes = json.load(f)
        new_game = changes["new_game"]["id"] if changes["new_game"] else None
        paths = ([f"games/{new_game}"] if new_game else []) + sorted(changes["added"])
        if not paths:  # synth.py --new-game 0 --add-rate 0
            return None
        sizes = []
        for path in paths:
            top = os.path.join(pair_dir, "new", path)
            if os.path.isdir(top):
                sizes += [os.lstat(os.path.join(dp, name)).st_size for dp, _, names in os.walk(top) for name in names]
            else:
                sizes.append(os.lstat(top).st_size)
        files, size = len(sizes), sum(sizes)
        log(f"synthetic: compressing the new content ({size / MiB:.0f} MiB) with xz -9e for the bound")
        with tempfile.NamedTemporaryFile() as names:  # a file, not tar's stdin: a long list never blocks
            names.write(b"".join(path.encode() + b"\0" for path in paths))
            names.flush()
            tar = subprocess.Popen(["tar", "-C", os.path.join(pair_dir, "new"), "--sort=name", "--null",
                                    "-T", names.name, "-cf", "-"], stdout=subprocess.PIPE)
            xz = subprocess.Popen(["xz", "-9e", "-T1", "-c"], stdin=tar.stdout, stdout=subprocess.PIPE)
            tar.stdout.close()
            compressed = 0
            while block := xz.stdout.read(1 << 20):
                compressed += len(block)
            if tar.wait() != 0 or xz.wait() != 0:
                raise BenchError("synthetic: tar | xz -9e of the new content failed")
        written = sum(op["length"] for ops in changes["modified"].values() for op in ops if op["op"] != "cut")
        return {"new_game": f"games/{new_game}" if new_game else None, "added_files": len(changes["added"]),
                "files": files, "bytes": size, "compressor": "tar | xz -9e", "compressed_bytes": compressed,
                "written_random_bytes": written, "least_bytes": compressed + written}

    def measure_make_rounds(self, pair, old, new, key, ours):
        """Where our single make time and ostree's are too close to tell apart, both timed again in
        turns (tests/benchmarks/make_rounds.py); None when they are not, or ostree failed. A failure
        of ostree here is reported, not fatal."""
        with open(os.path.join(self.results, f"peers-{pair}.json")) as f:
            ostree = ostree_row({"peers": {pair: json.load(f)}}, pair)
        if ostree is None or not make_rounds.close(ours["make"]["wall_s"], ostree["make_s"]):
            return None
        d = Path(self.work, pair)
        log(f"{pair}: bundle make {ours['make']['wall_s']:.1f} s and ostree {ostree['make_s']:.1f} s are close: "
            f"timing both again, {make_rounds.ROUNDS} times each in turns")
        try:
            return {"rounds": make_rounds.measure(
                d / "rounds", [self.bundle, "make", "--release", d / "new.toml", "--base", d / "old.toml", "--key",
                               key, "--out", d / "rounds" / "bundle", "--drop-xattrs"], d / "rounds" / "bundle",
                Path(old), Path(new), run_timed)}
        except RuntimeError as e:
            log(f"warning: {pair}: {e}")
            return {"error": str(e)}

    def run_peers(self, pair):
        methods = [m for m in PEER_METHODS[pair] if m not in PEER_METHODS_DROPPED.get(pair, {})]
        log(f"{pair}: peers ({', '.join(methods)}) - this takes a while")
        cmd = [sys.executable, os.path.join(self.bench_dir, "peers.py"), pair, "--corpus", self.corpus,
               "--work", os.path.join(self.work, "peers-work", pair), "--results", self.results,
               "--only", ",".join(methods)]
        if self.args.limit:
            cmd += ["--limit", str(self.args.limit)]
        log_path = os.path.join(self.work, "logs", f"peers-{pair}.log")
        try:
            run_script(f"{pair}: peers.py", cmd, log_path)
        except BenchError as e:
            # Peers failing is reported, not fatal; a peers.py that wrote nothing is.
            if not os.path.exists(os.path.join(self.results, f"peers-{pair}.json")):
                raise
            log(f"warning: {e}")

    def versions(self):
        try:
            with open(os.path.realpath(self.bundle), "rb") as f:
                shebang = f.readline().decode(errors="replace")
            python = [shebang[2:].strip()] if shebang.startswith("#!") else [sys.executable]
        except OSError:
            python = [sys.executable]
        peer_versions = {}
        for tool, cmd in (("zstd", "zstd --version"), ("xdelta3", "xdelta3 -V 2>&1"),
                          ("bsdiff", "dpkg-query -W -f '${Version}' bsdiff"),
                          ("ostree", "ostree --version | sed -n 's/.*Version: //p'")):
            peer_versions[tool] = short_version(first_line(cmd))
        cpu_model = "?"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu_model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        return {
            "bundle_version": first_line([self.bundle, "--version"]).rsplit("version ", 1)[-1],
            "python_version": first_line(python + ["--version"]),
            "zstandard": first_line(python + ["-c", "import zstandard as z; print(z.__version__, 'libzstd', "
                                              "'.'.join(map(str, z.ZSTD_VERSION)))"]),
            "peer_versions": peer_versions,
            "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model, "kernel": platform.release(),
                        "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30},
        }

    def save(self, name, data):
        with open(os.path.join(self.results, name), "w") as f:
            json.dump(data, f, indent=1)

    # --- the run ----------------------------------------------------------------------------------
    def run(self):
        self.need_tool("/usr/bin/time", "time")  # GNU time: -v reports the peak RSS
        for f in ("peers.py", "synth.py", "treestats.py"):
            if not os.path.exists(os.path.join(self.bench_dir, f)):
                raise BenchError(f"no {f} in {self.bench_dir} (expected ../shared/bench beside the repository; "
                                 "set BENCH=...)")
        for command, package in {**PEER_TOOLS, **BOUND_TOOLS, **CABINET_TOOLS}.items():
            self.need_tool(command, package)
        self.make_work()
        key, root = self.make_keys()
        for pair in self.args.pairs:
            old, new = self.ensure_pair(pair)
            bundle_dir, ours = self.measure_ours(pair, old, new, key, root)
            ours.update(self.describe_bundle(pair, bundle_dir, new))
            ours["work_fs"] = first_line(["findmnt", "-no", "FSTYPE", "-T", self.work])
            ours["peers_dropped"] = PEER_METHODS_DROPPED.get(pair, {})
            self.save(f"ours-{pair}.json", ours)
            if pair == "platform":
                self.save("floor-platform.json", self.measure_floor(old, new))
            if pair == "synthetic" and (unavoidable := self.measure_new_content(os.path.dirname(new))):
                self.save("unavoidable-synthetic.json", unavoidable)
            warm_page_cache(pair, old, new)
            self.run_peers(pair)
            if (rounds := self.measure_make_rounds(pair, old, new, key, ours)) is not None:
                self.save(f"rounds-{pair}.json", rounds)
        if not self.args.no_bigfile:
            base, size, rewritten = self.ensure_bigfile()
            _, big = self.measure_ours("bigfile", os.path.join(base, "old"), os.path.join(base, "new"), key, root)
            big.update({"size": size, "rewritten": rewritten})
            self.save("bigfile.json", big)
        self.save("run.json", {
            "pairs": self.args.pairs,
            "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            "peer_limit_s": self.args.limit,
            **self.versions(),
        })
        return self.results


def warm_page_cache(name, *trees):
    """Read every file of ``trees`` once, so that ours and the peers both start from a warm page
    cache: a tree read from the disk made `bundle make` of the platform pair take 80 s instead of
    23 s (33% CPU), and whichever step ran first would pay for it."""
    log(f"{name}: reading both trees into the page cache")
    for tree in trees:
        for dp, _, names in os.walk(tree):
            for file_name in names:
                p = os.path.join(dp, file_name)
                if os.path.isfile(p) and not os.path.islink(p):
                    with open(p, "rb", buffering=0) as f:
                        while f.read(1 << 20):
                            pass


def changed_files(old, new):
    """``(paths, bytes)``: the regular files of new whose content differs from old's at the same path."""
    changed, size = [], 0
    for dp, _, names in os.walk(new):
        for name in names:
            p = os.path.join(dp, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            rel = os.path.relpath(p, new)
            if not same_content(os.path.join(old, rel), p):
                changed.append(rel)
                size += os.path.getsize(p)
    return changed, size


def same_content(a, b):
    """True when the regular file a exists and has b's bytes."""
    try:
        if os.path.islink(a) or not os.path.isfile(a) or os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(MiB), fb.read(MiB)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=",".join(PAIRS),
                    help="comma-separated pairs to measure (default: platform,kernel,synthetic)")
    ap.add_argument("--no-bigfile", action="store_true", help="skip the one-big-file memory case")
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "BENCHMARKS.md"),
                    help="where to write the report (default docs/BENCHMARKS.md; use another file for dry runs)")
    ap.add_argument("--work", help="scratch directory (default: a new one under $CORPUS/_work, on the same disk "
                                   "as the pairs); removed at the end unless --keep")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (bundles, logs, results)")
    ap.add_argument("--limit", type=int, help="time limit per peer step in seconds (peers.py --limit)")
    ap.add_argument("--synthetic-size", default="2GiB", help="size of the synthetic tree (default 2GiB; smaller "
                                                             "for dry runs, e.g. 64MiB)")
    ap.add_argument("--bigfile-size", default="4GiB", help="size of the big file (default 4GiB; smaller for dry runs)")
    ap.add_argument("--report-only", metavar="DIR",
                    help="rewrite the report from the results kept in DIR (a --keep run's scratch directory, or "
                         "its results/) without measuring anything")
    a = ap.parse_args(argv)
    a.pairs = [p for p in a.pairs.split(",") if p]
    for p in a.pairs:
        if p not in PAIRS:
            ap.error(f"--pairs: unknown pair {p!r}; choose from {','.join(PAIRS)}")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(MiB|GiB)", a.bigfile_size)
    if not m:
        ap.error(f"--bigfile-size {a.bigfile_size!r}: give e.g. 4GiB or 64MiB")
    a.bigfile_size = int(float(m.group(1)) * (MiB if m.group(2) == "MiB" else 1 << 30))
    return a


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.report_only:
        results_dir = args.report_only
        if os.path.isdir(os.path.join(results_dir, "results")):
            results_dir = os.path.join(results_dir, "results")
        try:
            line = write_report(results_dir, args.out)
        except BenchError as e:
            print(f"bench.py: error: {e}", file=sys.stderr)
            return 1
        print(line)
        return 0

    bench_dir = os.environ.get("BENCH") or os.path.join(os.path.dirname(REPO), "shared", "bench")
    corpus = os.environ.get("CORPUS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bundle-corpus")
    os.environ["CORPUS"] = corpus  # the shared build scripts and peers.py read it
    bundle = os.environ.get("BUNDLE") or shutil.which("bundle") or os.path.join(REPO, ".venv", "bin", "bundle")
    if not os.path.exists(bundle):
        print("bench.py: error: no 'bundle' command: run 'make bench' (it creates .venv) or put the venv's bin "
              "on PATH", file=sys.stderr)
        return 1
    bench = Bench(args, bench_dir, corpus, bundle)
    keep = args.keep
    try:
        results_dir = bench.run()
        line = write_report(results_dir, args.out)
    except BenchError as e:
        keep = True
        where = f" (scratch kept in {bench.work})" if bench.work else ""
        print(f"bench.py: error: {e}{where}", file=sys.stderr)
        return 1
    finally:
        if bench.work and not keep:
            subprocess.run(["rm", "-rf", "--one-file-system", bench.work], check=False)
        elif bench.work:
            log(f"kept {bench.work}")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
