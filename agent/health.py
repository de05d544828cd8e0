"""Running the health hooks of a trial boot (docs/AGENT.md, "Trial boot").

A hook is a program of the release being tried, so whatever it does is an answer, never a crash
of the agent: bytes that are not UTF-8, output without end, children that outlive it. Only the
end of its output is kept (the reason shown is its last line), read as it comes so a hook that
prints without end costs no memory, and decoded with the undecodable bytes as ``\\xNN``.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from keys.printable import printable

KEPT_OUTPUT_BYTES = 4096  # the end of a hook's output: its last line is the reason shown
OUTPUT_GRACE_SECONDS = 2  # to read what is left in the pipe once the hook has exited


def _keep_the_end(stream, kept: bytearray) -> None:
    while chunk := stream.read1(1 << 16):
        kept += chunk
        del kept[:-KEPT_OUTPUT_BYTES]


def run_hook(hook: Path, environment: Path, timeout: float) -> tuple[bool, str]:
    """Run one hook: ``(healthy, why)``. It gets ``BUNDLE_AGENT_ENVIRONMENT``, no standard input,
    and ``timeout`` seconds; a hook still running then is killed and counts as failed."""
    env = {**os.environ, "BUNDLE_AGENT_ENVIRONMENT": str(environment)}
    try:
        process = subprocess.Popen([str(hook)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
    except OSError as error:
        return False, f"health hook {hook} could not run: {error.strerror}"
    kept = bytearray()
    reader = threading.Thread(target=_keep_the_end, args=(process.stdout, kept), daemon=True)
    reader.start()
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False, f"health hook {hook} did not finish within {timeout:g} s"
    finally:
        # What the hook wrote is in the pipe when it exits; a child it left running may hold the
        # pipe open for as long as it likes, and is not waited for.
        reader.join(OUTPUT_GRACE_SECONDS)
        if not reader.is_alive():
            process.stdout.close()
    if code == 0:
        return True, ""
    said = bytes(kept).decode("utf-8", "backslashreplace").strip().splitlines()[-1:]
    return False, f"health hook {hook} failed with exit {code}" + (f": {printable(said[0])}" if said else "")
