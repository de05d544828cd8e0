"""Running a set-up command of the bench (mount, mkfs, ostree commit ...) whose time is not measured."""
import subprocess


def run(*command) -> str:
    """The command's stdout; raises RuntimeError with its exit code and stderr when it fails."""
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout
