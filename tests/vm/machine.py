"""The VM harness: one QEMU machine (q35, OVMF, TCG) driven over QMP and its serial console.

A :class:`Machine` owns a QEMU process, a private copy of the OVMF variable store, its disks, a
serial console read into a log by a thread, and a QMP connection. It can wait for text on the
console since a mark, type commands into the root shell the reference image runs on ttyS0, plug
and pull USB sticks (``usb-storage`` on a ``qemu-xhci`` bus, hot-plugged over QMP), and cut the
power (SIGKILL, then start again on the same disks). It knows nothing of pytest; every failure
raises :class:`MachineError` carrying the last lines of the console.

One virtual CPU. With two, OVMF now and then hung at a warm reset, its CPU spinning with
interrupts off, as in a known hang of the firmware's processor wake-up: it waits with no timeout
for a second CPU to answer, and on an overloaded host (two machines of two CPUs each on two
cores) that CPU may not (tianocore/edk2 pull request 13164, "Ovmf ap sipi resend"). With one
there is none to wait for (the first sweep with one had no hang in 132 boots), and the sweep's
machines, one core each, no longer take cycles from each other.

Accelerator: TCG (``-accel tcg,thread=multi``). This machine kind offers /dev/kvm, but a KVM guest
stops with "KVM internal error" in OVMF, so KVM is used only when a short probe boot with it (a
GRUB that prints one line and halts) succeeds within 20 s (:func:`accelerator`); ``VM_ACCEL``
overrides the choice.

Disk cache and power cuts. A scenario's disk is a qcow2 overlay over the raw image
(``qemu-img create -f qcow2 -b cabinet.img -F raw``) attached with ``cache=writeback``. QEMU then
writes guest data into the host's page cache, which survives the QEMU process, but it keeps
qcow2's metadata - the L2 tables that map a guest cluster to a cluster of the file, and the
refcounts - in its own memory and writes them out when the guest flushes (``cache=writeback``
honours flushes; ``cache=unsafe`` would ignore them). A SIGKILL therefore loses every write the
guest made to a cluster first allocated since its last flush: the data bytes are in the file,
but nothing points at them, and the guest reads the old contents (the base image's) there.
Rewrites of clusters already allocated and mapped on disk do survive, so this is a disk with a
volatile write cache that loses what was not flushed - but not every such write, as the worst
real disk could. It is why this mode is used and not ``cache=unsafe`` (flushes ignored: flushed
writes would be lost too) nor a raw image (nothing lost at all: the host kernel keeps what QEMU
wrote). Each scenario's overlay starts empty, so everything the cabinet writes after its
factory state lands in new clusters at first.

Measured here (QEMU 7.2; tests/vm/test_disk_cache.py repeats it on every run): 1 MiB of 0xab
written to the machine's disk through QEMU's block layer (the ``qemu-io`` monitor command, the
path a guest write takes) at a cluster the overlay does not hold yet, then QEMU killed: the
overlay reads back the base image's zeros there. Written, flushed, killed: 0xab. Written to a
cluster flushed once before, killed: the new bytes. The same unflushed write to a raw image with
``cache=writeback``: 0xab (so what is lost is qcow2's mapping, not the data).
"""

from __future__ import annotations

import base64
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.vm import esp
from tests.vm.qmp import QMP, QMPError

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
TCG = "tcg,thread=multi"
KVM_PROBE_SECONDS = 20
TAIL_LINES = 40
# grub.cfg prints "cabinet: booting ENV" (+ " bundle.trial=1" on a trial) once per boot, before it
# loads the kernel (system/linux/grub/grub.cfg). Should GRUB ever echo it on two terminals (its
# serial terminal and the firmware console OVMF mirrors to serial), an escape sequence between
# them glues the copies together on one line: a name ends at a newline or the next copy.
BOOTING = re.compile(r"cabinet: booting ([A-Za-z0-9_.+-]+?)( bundle\.trial=1)? *(?=\n|cabinet:)")
FIRMWARE_BOOT = re.compile(r"BdsDxe: (?:loading|starting) Boot")  # OVMF, once per firmware boot
# The kernel's last words before a reset, or the firmware already starting the next boot.
REBOOTING = re.compile(rb"reboot: (?:Restarting system|Power down)|Kernel panic|BdsDxe: "
                       rb"|--- vm: (?:power cut|reset)")
_ESCAPES = re.compile(rb"\x1b(?:\[[0-9;?=]*[ -/]*[@-~]|[()][A-Za-z0-9]|[=>78cDEHM])")
# Console lines that are not a command's output: kernel messages and systemd's status lines.
_NOISE = re.compile(r"^(\[\s*\d+\.\d+\]|\[\s*(OK|FAILED|DEPEND|TIME|\*+)\s*\]|\s+(Starting|Stopping|Mounting|"
                    r"Unmounting|Activating|Deactivating) )")


class MachineError(Exception):
    """The machine did not do what was expected; the message ends with the console's last lines."""


@dataclass(frozen=True)
class Boot:
    """One boot as grub.cfg announced it: the environment and whether it was a trial."""

    env: str
    trial: bool


@dataclass(frozen=True)
class Shell:
    """A command's output (console noise removed) and exit status."""

    output: str
    status: int


@dataclass(frozen=True)
class Drive:
    """A disk: an image file and its format (``qcow2`` for a scenario's overlay)."""

    path: Path
    format: str = "raw"
    readonly: bool = False  # several machines may share a read-only disk


def overlay(base: Path, path: Path) -> Drive:
    """A qcow2 overlay of the raw ``base`` image at ``path``: the scenario writes only to it."""
    esp.run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base.resolve(), "-F", "raw", path)
    return Drive(path, "qcow2")


def clean(raw: bytes) -> str:
    """Console bytes as text: escape sequences, carriage returns and NULs removed."""
    return _ESCAPES.sub(b"", raw).replace(b"\r", b"").replace(b"\0", b"").decode("utf-8", errors="replace")


class Machine:
    """One QEMU virtual machine (see the module docstring). Use as a context manager or call
    :meth:`stop`; :meth:`start` boots it (again, after :meth:`stop` or a power cut)."""

    def __init__(self, directory: Path, drives: list[Drive], *, memory: int = 1024, cpus: int = 1,
                 accel: str | None = None, extra: tuple[str, ...] = (), noise: str | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.drives = drives
        self.memory, self.cpus, self.extra = memory, cpus, extra
        # Console lines that are never a command's output (``noise``: more of them, a regex).
        self._noise = re.compile(f"{_NOISE.pattern}|{noise}") if noise else _NOISE
        self.accel = accel or accelerator()
        self.vars = self.dir / "OVMF_VARS.fd"  # the machine's own NVRAM, kept across restarts
        shutil.copyfile(OVMF_VARS, self.vars)
        self._sockets = Path(tempfile.mkdtemp(prefix="vm-", dir="/tmp"))  # short: sun_path is 108 bytes
        self.log = bytearray()  # the whole console, across restarts
        self.log_file = open(self.dir / "serial.log", "ab")
        self._changed = threading.Condition()
        self._last_output = time.monotonic()
        self._process: subprocess.Popen | None = None
        self._serial: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self.qmp: QMP | None = None
        self.sticks: dict[str, Path] = {}
        self._kernel_at: int | None = None  # where the running kernel's first line is in the log
        self.power_cuts = 0
        self.insertions = 0
        self.starts = 0

    # --- life cycle ---------------------------------------------------------------------------

    def command_line(self) -> list[str]:
        command = ["qemu-system-x86_64", "-machine", "q35", "-accel", self.accel, "-smp", str(self.cpus),
                   "-m", str(self.memory), "-display", "none", "-monitor", "none", "-parallel", "none",
                   "-nic", "none", "-S",
                   "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                   "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
                   "-chardev", f"socket,id=console,path={self._sockets / 'serial'},server=on,wait=off",
                   "-serial", "chardev:console",
                   "-qmp", f"unix:{self._sockets / 'qmp'},server=on,wait=off",
                   "-device", "qemu-xhci,id=xhci"]
        for index, drive in enumerate(self.drives):
            command += ["-drive", f"file={drive.path},format={drive.format},if=none,id=disk{index},"
                                  f"cache=writeback" + (",readonly=on" if drive.readonly else ""),
                        # OVMF connects only the devices named in QEMU's boot order: every disk
                        # gets a place in it, or GRUB would not see the second one.
                        "-device", f"virtio-blk-pci,drive=disk{index},bootindex={index + 1}"]
        return command + list(self.extra)

    def start(self) -> "Machine":
        """Start QEMU paused, attach the console and QMP, then let the guest run."""
        assert self._process is None, "already running"
        for name in ("serial", "qmp"):
            (self._sockets / name).unlink(missing_ok=True)
        stderr = open(self.dir / "qemu.stderr", "ab")
        self._process = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL, stdout=stderr,
                                         stderr=stderr)
        stderr.close()
        self.starts += 1
        try:
            self._serial = self._connect(self._sockets / "serial")
            self._reader = threading.Thread(target=self._read_console, args=(self._serial,), daemon=True)
            self._reader.start()
            self.qmp = QMP(self._sockets / "qmp")
            self.qmp.execute("cont")
        except (OSError, QMPError) as error:
            self._kill()
            raise self.error(f"QEMU did not start: {error}\n{self.stderr()}") from error
        return self

    def stop(self) -> None:
        """Kill QEMU (the disks keep what reached them) and close everything of this run."""
        self._kill()

    def close(self) -> None:
        self._kill()
        self.log_file.close()
        shutil.rmtree(self._sockets, ignore_errors=True)

    def __enter__(self) -> "Machine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL QEMU (no flush of anything it holds), then power on again."""
        self._kill()
        self.power_cuts += 1
        self.note(f"\n--- vm: power cut {self.power_cuts} ---\n")
        self.sticks.clear()  # a stick is plugged in again by the scenario, as a technician would
        self.start()

    def power_cycle(self) -> None:
        """Switch off and on again, not counted as a power cut: for a firmware hung before the
        kernel (FIRMWARE_HANG), when nothing of the guest's is in flight. No stick is in after it."""
        self._kill()
        self.note("\n--- vm: power cycle ---\n")
        self.sticks.clear()
        self.start()
        with self._changed:
            self._last_output = time.monotonic()  # a silence after it is counted from it

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _kill(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGKILL)
            self._process.wait()
            self._process = None
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None

    def _connect(self, path: Path, timeout: float = 10.0) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.connect(str(path))
                return connection
            except (FileNotFoundError, ConnectionRefusedError):
                connection.close()
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _read_console(self, connection: socket.socket) -> None:
        while True:
            try:
                chunk = connection.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            with self._changed:
                self.log += chunk
                self._last_output = time.monotonic()
                self.log_file.write(chunk)
                self.log_file.flush()
                self._changed.notify_all()

    def note(self, text: str) -> None:
        """A line of the harness's own in the console log (marks power cuts for a reader)."""
        with self._changed:
            self.log += text.encode()
            self.log_file.write(text.encode())
            self.log_file.flush()

    # --- the console ---------------------------------------------------------------------------

    def mark(self) -> int:
        """A position in the console log: wait_for(since=mark) looks only at what came after it."""
        with self._changed:
            return len(self.log)

    def text(self, since: int = 0, until: int | None = None) -> str:
        with self._changed:
            return clean(bytes(self.log[since:until]))

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.text(max(0, len(self.log) - 64 * 1024)).splitlines()[-lines:])

    def stderr(self) -> str:
        path = self.dir / "qemu.stderr"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def silent_seconds(self) -> float:
        """Seconds since the console last printed anything."""
        with self._changed:
            return time.monotonic() - self._last_output

    def reset(self) -> None:
        """Press the reset button (QEMU's system_reset): what a board's watchdog does."""
        self.qmp.execute("system_reset")
        self.note("\n--- vm: reset ---\n")
        with self._changed:
            self._last_output = time.monotonic()  # a silence after a reset is counted from it

    def cpu_state(self) -> str:
        """Where a silent machine's CPU is (QEMU's state and the first CPU's instruction pointer and
        mode), for a hang in the firmware or in GRUB, which print nothing more."""
        try:
            status = self.hmp("info status").strip()
            registers = self.hmp("info registers").splitlines()
        except (QMPError, OSError) as error:
            return f"(no CPU state: {error})"
        wanted = [line for line in registers if line.startswith(("RAX=", "RIP=", "CS =", "CR0="))]
        return "--- CPU 0 ---\n" + "\n".join([status, *wanted])

    def error(self, message: str) -> MachineError:
        return MachineError(f"{message}\n--- last {TAIL_LINES} lines of the serial console "
                            f"({self.dir / 'serial.log'}) ---\n{self.tail()}")

    def wait_for(self, pattern: str | re.Pattern, timeout: float, since: int | None = None) -> re.Match:
        """The first match of ``pattern`` in the console after ``since`` (default: now).

        Raises MachineError when it does not appear within ``timeout`` seconds or QEMU exits.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        start = self.mark() if since is None else since
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = regex.search(clean(bytes(self.log[start:])))
                if found:
                    return found
                if not self.running():
                    raise self.error(f"QEMU exited while waiting for {regex.pattern!r}\n{self.stderr()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.error(f"{regex.pattern!r} did not appear on the console within {timeout:.0f} s\n"
                                     f"{self.cpu_state()}")
                self._changed.wait(min(left, 0.5))

    def boots(self, since: int = 0) -> list[Boot]:
        """Every boot grub.cfg announced after ``since``, in order (one per firmware boot)."""
        boots = []
        for segment in FIRMWARE_BOOT.split(self.text(since)):
            found = BOOTING.search(segment)  # the first line only: GRUB may print it twice
            if found:
                boots.append(Boot(found.group(1), bool(found.group(2))))
        return boots

    def wait_boot(self, timeout: float = 120, since: int | None = None) -> Boot:
        """The next boot GRUB announces (after ``since``, default now)."""
        found = self.wait_for(BOOTING, timeout, since)
        return Boot(found.group(1), bool(found.group(2)))

    def login(self, timeout: float = 600, since: int | None = None) -> None:
        """Wait until the root shell on ttyS0 answers (after the boot that follows ``since``), then
        quiet the kernel's console messages so command output stays readable."""
        start = self.mark() if since is None else since
        deadline = time.monotonic() + timeout
        # Nothing is typed before the kernel runs: a key pressed while GRUB decides could stop it
        # at its menu or open its command line.
        self.wait_for(r"Linux version", timeout, since=start)
        with self._changed:
            self._kernel_at = self.log.rfind(b"Linux version")
        token = uuid.uuid4().hex[:10]
        while True:
            self.type(f"printf '%s-%s\\n' READY {token}")
            try:
                self.wait_for(rf"READY-{token}\n", 3, since=start)
                break
            except MachineError:
                if time.monotonic() > deadline:
                    raise self.error(f"no root shell on the serial console within {timeout:.0f} s") from None
        self.shell("dmesg -n 1; stty -echo cols 500", timeout=30)

    def rebooting(self) -> int | None:
        """Where in the log the running system's end shows (a reset, a panic, the firmware of the
        next boot), or None while the system logged into last is still up."""
        with self._changed:
            if self._kernel_at is None:
                return None
            found = REBOOTING.search(self.log, self._kernel_at)
            return found.start() if found else None

    def type(self, line: str) -> None:
        """Send ``line`` and a newline to the serial console, as a technician would type it."""
        if self._serial is None:
            raise self.error("the machine is not running")
        if self._kernel_at is None or self.rebooting() is not None:
            # Keys typed now would reach the firmware or GRUB of the next boot, not a shell.
            raise self.error("not typing: the machine is rebooting (log in again once it is up)")
        self._serial.sendall(line.encode() + b"\n")

    def shell(self, command: str, timeout: float = 120, check: bool = False) -> Shell:
        """Run ``command`` in the root shell on ttyS0; its output and exit status.

        The output sits between two marker lines that the command line itself does not contain as
        typed (printf assembles them), so the echo of the typed line never matches. Raises
        MachineError on timeout, when the machine goes down meanwhile, and when ``check`` and the
        status is not 0.
        """
        token = uuid.uuid4().hex[:10]
        start = self.mark()
        self.type(f"printf '\\n%s-%s\\n' BEGIN {token}; ( {command.rstrip().rstrip(';')} ); "
                  f"printf '\\n%s-%s:%d\\n' END {token} $?")
        found = self.wait_for(re.compile(rf"\nBEGIN-{token}\n(.*?)\nEND-{token}:(\d+)\n|"
                                         rf"({REBOOTING.pattern.decode()})", re.S), timeout, since=start)
        if found.group(3):
            raise self.error(f"the machine went down while running {command!r} ({found.group(3)})")
        lines = [line for line in found.group(1).splitlines() if not self._noise.match(line)]
        result = Shell("\n".join(lines), int(found.group(2)))
        if check and result.status != 0:
            raise self.error(f"{command!r} exited {result.status}:\n{result.output}")
        return result

    def put_file(self, path: str, data: bytes, mode: str = "0644") -> None:
        """Write ``data`` to ``path`` in the guest through the shell (base64 in lines short enough
        for the terminal's line discipline)."""
        encoded = base64.b64encode(data).decode()
        self.shell(f": > {path}.b64", check=True)
        for start in range(0, len(encoded), 1000):
            self.shell(f"printf '%s\\n' '{encoded[start:start + 1000]}' >> {path}.b64", check=True)
        self.shell(f"base64 -d {path}.b64 > {path} && rm {path}.b64 && chmod {mode} {path}", check=True)

    # --- USB sticks ----------------------------------------------------------------------------

    def insert_stick(self, image: Path, name: str = "stick") -> None:
        """Plug ``image`` in as a USB mass-storage device on the xHCI bus (a removable disk)."""
        try:
            self.qmp.execute("blockdev-add", {"driver": "raw", "node-name": f"{name}-disk",
                                              "file": {"driver": "file", "filename": str(image)}})
            self.qmp.execute("device_add", {"driver": "usb-storage", "bus": "xhci.0", "drive": f"{name}-disk",
                                            "removable": True, "id": name})
        except QMPError as error:
            raise self.error(f"cannot insert stick {image}: {error}") from error
        self.sticks[name] = Path(image)
        self.insertions += 1
        self.note(f"\n--- vm: stick {name} inserted ---\n")

    def pull_stick(self, name: str = "stick") -> None:
        """Pull the stick out: unplug the device, then drop its disk once QEMU says it is gone.
        A stick already out (pulled at a firmware hang: tests/vm/cabinet.py) stays out."""
        if name not in self.sticks:
            return
        try:
            self.qmp.execute("device_del", {"id": name})
            self.qmp.wait_event("DEVICE_DELETED", timeout=30, device=name)
            self.qmp.execute("blockdev-del", {"node-name": f"{name}-disk"})
        except QMPError as error:
            raise self.error(f"cannot pull stick {name}: {error}") from error
        self.sticks.pop(name, None)
        self.note(f"\n--- vm: stick {name} pulled ---\n")

    def hmp(self, command: str) -> str:
        """A human-monitor command (e.g. ``qemu-io disk0 "write 0 64k"``), through QMP."""
        return self.qmp.execute("human-monitor-command", {"command-line": command})


@functools.cache
def accelerator() -> str:
    """``kvm`` when a probe boot with it prints its line within KVM_PROBE_SECONDS, else TCG."""
    chosen = os.environ.get("VM_ACCEL")
    if chosen:
        return chosen
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return TCG
    with tempfile.TemporaryDirectory() as work:
        probe = Path(work)
        bootx64 = esp.standalone_grub('echo "probe: kvm boots"\nhalt\n', probe / "BOOTX64.EFI")
        disk = esp.fat_image(probe / "esp.img", {f"{esp.BOOT_DIR}/BOOTX64.EFI": bootx64}, label="PROBE")
        shutil.copyfile(OVMF_VARS, probe / "vars.fd")
        output, errors = probe / "console", probe / "stderr"
        process = subprocess.Popen(
            ["qemu-system-x86_64", "-machine", "q35", "-accel", "kvm", "-m", "256", "-display", "none",
             "-no-reboot", "-nic", "none", "-serial", f"file:{output}", "-monitor", "none",
             "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
             "-drive", f"if=pflash,format=raw,unit=1,file={probe / 'vars.fd'}",
             "-drive", f"file={disk},format=raw,if=virtio"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(errors, "wb"))
        deadline = time.monotonic() + KVM_PROBE_SECONDS
        booted = failed = False
        while time.monotonic() < deadline and process.poll() is None and not (booted or failed):
            time.sleep(0.25)
            booted = output.exists() and b"probe: kvm boots" in output.read_bytes()
            failed = b"KVM internal error" in errors.read_bytes()  # the guest is stopped for good
        if process.poll() is None:
            process.kill()
        process.wait()
    return "kvm" if booted else TCG
