"""The technician's menu driven through a pseudo-terminal (pexpect), as a person at a serial
console drives it: 80x24, TERM=dumb, every item answered by typing. The cabinet is simulated
(the dirs backend plays the boot loader, so a "reboot" is `bundle-agent boot` + `boot-check`).

One story: status; four sticks told apart; install; rollback and switch through trials; audit
after files were modified, deleted and added in the running environment (the exact paths);
repair through a trial; the log; a report exported and verified by the vendor's tool."""

from __future__ import annotations

import os
import re
import shutil
import signal

import pexpect

from tests.sim.device import Cabinet
from tests.sim.tools import BIN, interruptible, run_cli

CHOICE = re.compile(r"choice \[0-10\]: ")
STICK = re.compile(r"stick mount point[^:\n]*: ")
CONFIRM = re.compile(r"\[y/N\]: ")


class Menu:
    """``bundle-agent technician`` on a pseudo-terminal of 24 lines and 80 columns."""

    def __init__(self, cabinet: Cabinet, log):
        env = {"PATH": os.environ["PATH"], "TERM": "dumb", "HOME": str(cabinet.dir)}
        self.child = pexpect.spawn(str(BIN / "bundle-agent"), ["--sysroot", str(cabinet.dir), "--config",
                                                                "/agent.toml", "technician"],
                                   env=env, encoding="utf-8", timeout=120, dimensions=(24, 80),
                                   preexec_fn=interruptible)  # Ctrl-C as at a console, however pytest was started
        self.child.logfile_read = log
        self.child.expect(CHOICE)

    def choose(self, number: int) -> None:
        self.child.sendline(str(number))

    def answer(self, prompt: str | re.Pattern, text: str) -> None:
        """Wait for ``prompt`` (a pattern, or the exact text), then type ``text`` and Enter."""
        if isinstance(prompt, str):
            self.child.expect_exact(prompt)
        else:
            self.child.expect(prompt)
        self.child.sendline(text)

    def shows(self, text: str) -> str:
        """Wait for ``text``; everything shown before it (since the last wait)."""
        self.child.expect_exact(text)
        return self.child.before

    def back(self) -> None:
        self.child.expect(CHOICE)

    def leave(self) -> None:
        self.child.expect(CHOICE)
        self.child.sendline("0")
        self.child.expect(pexpect.EOF)
        self.child.close()
        assert self.child.exitstatus == 0, self.child.exitstatus


def reboot(cabinet: Cabinet) -> None:
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)


def test_a_technician_works_through_every_item_of_the_menu(world, tmp_path):
    cabinet = Cabinet(world, tmp_path / "device", keep=3)
    cabinet.provision()
    transcript = open(tmp_path / "menu.log", "w", encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    current = world.stick(tmp_path / "current", "full-1")
    newer = world.stick(tmp_path / "newer", "d12")
    foreign = tmp_path / "foreign"
    shutil.copytree(newer / "demo-cabinet", foreign / "slot-deluxe")
    repair_stick = world.stick(tmp_path / "repair", "full-2")

    menu = Menu(cabinet, transcript)
    menu.choose(1)
    menu.shows("committed: env-1")
    for stick, verdict in ((empty, "no bundle for this product on the stick"),
                           (foreign, "the stick holds bundles for slot-deluxe"),
                           (current, "this machine already has what the stick carries"),
                           (newer, "an install from this stick would stage an update")):
        menu.back()
        menu.choose(2)
        menu.answer(STICK, str(stick))
        menu.shows(verdict)
    menu.back()
    menu.choose(3)
    menu.answer(STICK, str(newer))
    menu.answer("Enter for none", "")
    menu.answer(CONFIRM, "y")
    menu.shows("platform: 13.2.0 (sequence 6) -> 13.2.1 (sequence 7)")
    menu.shows("reboot to start the trial")
    menu.leave()
    reboot(cabinet)
    assert cabinet.status()["committed_environment"] == "env-2"

    menu = Menu(cabinet, transcript)
    menu.choose(4)
    menu.answer(CONFIRM, "y")
    menu.shows("env-1 boots once for a trial")
    menu.leave()
    reboot(cabinet)
    assert cabinet.status()["committed_environment"] == "env-1"

    menu = Menu(cabinet, transcript)
    menu.choose(5)
    menu.shows("committed environments kept: env-2")
    menu.answer("switch to: ", "env-2")
    menu.answer(CONFIRM, "n")  # no token needed: env-2 is at the floors
    menu.answer(CONFIRM, "y")
    menu.shows("env-2 boots once for a trial")
    menu.leave()
    reboot(cabinet)
    assert cabinet.status()["committed_environment"] == "env-2"

    running = cabinet.environments_dir / "env-2" / "platform"
    (running / "usr/bin/cabinet-engine").write_bytes(b"modified by hand")
    (running / "etc/cabinet.conf").unlink()
    (running / "usr/bin/added").write_text("added by hand\n")
    menu = Menu(cabinet, transcript)
    menu.choose(6)
    menu.answer("environment to audit [env-2]: ", "")
    menu.shows("audit of env-2: NOT CLEAN")
    menu.child.expect(CHOICE)
    shown = menu.child.before
    assert "missing    etc/cabinet.conf" in shown
    assert "modified   usr/bin/cabinet-engine (" in shown
    assert "unexpected usr/bin/added" in shown
    menu.child.sendline("7")
    menu.answer(STICK, str(repair_stick))
    menu.answer(CONFIRM, "y")
    menu.shows("platform: 13.2.1 (sequence 7) -> 13.2.1 (sequence 7)")
    menu.leave()
    reboot(cabinet)
    assert cabinet.status()["committed_environment"] == "env-3"
    assert cabinet.agent("technician", "audit").returncode == 0, "the repair rebuilt what was changed"

    menu = Menu(cabinet, transcript)
    menu.choose(8)
    menu.shows("-- more: Enter for the next screen, q to stop --")
    menu.child.sendline("q")
    menu.back()
    reports = tmp_path / "report-stick"
    reports.mkdir()
    menu.child.sendline("9")
    menu.answer(STICK, str(reports))
    menu.answer(CONFIRM, "y")
    menu.shows("wrote ")
    menu.leave()
    transcript.close()
    written = sorted((reports / "demo-cabinet" / "reports").glob("*.json"))
    assert [p.name for p in written] == ["SN0001-00000001.json"]
    registry = tmp_path / "devices"
    registry.mkdir()
    (registry / "SN0001.pub").write_text(cabinet.agent("identity", "--pub", check=True).stdout)
    verified = run_cli("bundle", "report", "verify", written[0], "--devices", registry)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    text = (tmp_path / "menu.log").read_text(encoding="utf-8")
    assert "\x1b" not in text, "no escape sequence: a dumb terminal shows every byte"
    # 80 columns, but for lines that repeat a path the technician typed (the terminal's echo, a
    # question naming the stick): those are as long as what was typed.
    assert max(len(line) for line in text.replace("\r", "").splitlines() if str(tmp_path) not in line) <= 80
    for item in ("Status", "What is on a stick", "Install from a stick", "Roll back to the previous environment",
                 "Switch to another environment", "Audit the installed files", "Repair from a stick",
                 "Log (newest first)", "Export a report to a stick"):
        assert f"--- {item} ---" in text, f"the item {item!r} was never reached"


def test_every_ctrl_c_stops_its_item_and_sigterm_leaves_the_menu(world, tmp_path):
    cabinet = Cabinet(world, tmp_path / "device")
    cabinet.provision()
    with open(tmp_path / "menu.log", "w") as log:
        menu = Menu(cabinet, log)
        for _ in range(3):  # the first Ctrl-C must not leave the later ones ignored
            menu.choose(2)  # what is on a stick: it asks for the mount point
            menu.child.expect(STICK)
            menu.child.sendintr()
            menu.shows("interrupted: back to the menu")
            menu.back()
        menu.choose(2)
        menu.child.expect(STICK)
        menu.child.kill(signal.SIGTERM)  # a service manager stopping it: the menu does not come back
        menu.child.expect(pexpect.EOF)
        menu.child.close()
        assert menu.child.exitstatus == 143, (menu.child.exitstatus, menu.child.signalstatus)
