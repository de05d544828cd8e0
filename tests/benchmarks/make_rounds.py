"""`bundle make` and `ostree static-delta generate` timed in turns, for `make bench`.

The make-time goal compares our wall time with ostree's on the same pair. The bench's single
samples of each are taken minutes apart, ours alone and ostree's among the other peers, and on
this 2-core machine the same `bundle make` of the platform pair took from 15.8 to 22.9 s from
run to run: more than the gap between the two tools there. So where the single samples are
within ``CLOSE`` of each other, the two are timed again in turns on the same warm trees (ours
first in odd rounds, ostree first in even ones, so that a drift of the machine weighs on both),
and the goal is held on the medians of those rounds.

ostree's steps are peers.py's (../shared/bench/peers.py): an archive repository with old and
new committed on one branch (not timed, as there), then the delta generated with the same
options.
"""
import shutil
import statistics
from pathlib import Path

from tests.benchmarks.commands import run

CLOSE = 1.25  # the slower single sample at most this many times the faster one
ROUNDS = 3


def close(ours_s: float, ostree_s: float) -> bool:
    """Whether single samples this near each other leave the comparison to the machine's noise."""
    return max(ours_s, ostree_s) <= CLOSE * min(ours_s, ostree_s)


def medians(rounds: list[dict]) -> tuple[float, float]:
    """The median wall seconds of ours and of ostree over ``rounds``."""
    return (statistics.median(r["ours_s"] for r in rounds), statistics.median(r["ostree_s"] for r in rounds))


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(work: Path, make_command: list, bundle_out: Path, old: Path, new: Path, timed,
            rounds: int = ROUNDS) -> list[dict]:
    """Times ``make_command`` (a `bundle make` writing ``bundle_out``) and ostree's delta of old ->
    new in turns, ``rounds`` times each, with ``timed(step, command, log_base, ok=...)``
    (bench.run_timed: it raises when our make fails, and with ``ok=None`` returns ostree's exit
    code). Returns one dict per round: who went first, each tool's wall seconds and output bytes.
    Raises RuntimeError when an ostree step fails; leaves no repository behind."""
    work.mkdir(parents=True)
    repo = work / "ostree-repo"
    delta = work / "ostree-delta.bin"
    try:
        run("ostree", f"--repo={repo}", "init", "--mode=archive")
        for tree, subject in ((old, "old"), (new, "new")):
            run("ostree", f"--repo={repo}", "commit", "-b", "main", f"--tree=dir={tree}", "-s", subject,
                 "--no-bindings")
        commits = {rev: run("ostree", f"--repo={repo}", "rev-parse", rev).strip() for rev in ("main^", "main")}
        generate = ["ostree", f"--repo={repo}", "static-delta", "generate", f"--from={commits['main^']}",
                    f"--to={commits['main']}", "--inline", "--min-fallback-size=0", f"--filename={delta}"]
        samples = []
        for number in range(1, rounds + 1):
            order = ("ours", "ostree") if number % 2 else ("ostree", "ours")
            sample = {"first": order[0]}
            for tool in order:
                if tool == "ours":
                    shutil.rmtree(bundle_out, ignore_errors=True)
                    sample["ours_s"] = timed(f"round {number}: bundle make", make_command,
                                             str(work / f"ours-{number}"))["wall_s"]
                    sample["ours_bytes"] = _bytes(bundle_out)
                else:
                    delta.unlink(missing_ok=True)
                    step = timed(f"round {number}: ostree static-delta generate", generate,
                                 str(work / f"ostree-{number}"), ok=None)
                    if step["exit"] != 0:
                        raise RuntimeError(f"ostree static-delta generate exited {step['exit']} in round {number} "
                                           f"(log: {work / f'ostree-{number}.log'})")
                    sample["ostree_s"] = step["wall_s"]
                    sample["ostree_bytes"] = delta.stat().st_size
            samples.append(sample)
        return samples
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        delta.unlink(missing_ok=True)
        shutil.rmtree(bundle_out, ignore_errors=True)
