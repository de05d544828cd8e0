"""Signed device reports: written on the stick by the device (agent/device_report.py), checked by
the vendor (bundle report verify | show). Each attack is a one-line change to a real report on a
real folder, and each refusal is asserted with what it left behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

import agent.stick_file
from agent.device_report import last_counter, report_requested, write_report
from agent.format.device_report import (DEFAULT_EVENTS, EVENTS_BUDGET, MAX_REPORT_BYTES, DeviceReport,
                                        MalformedReport, bounded_events, build_report, report_name,
                                        serial_in_name)
from agent.format.stick import StickLayoutError
from agent.identity import NoIdentity, ensure_identity, sign_report
from agent.stick_file import StickReadBackFailed, StickReadOnly
from bundler.device_reports import (ReportMismatch, UnknownDevice, VerifiedReport, find_replays, verify_report)
from keys.errors import BadSignature, Refused
from keys.minisign import Signature
from tests.sim.device import Cabinet
from tests.sim.reports import open_device, signed_report
from tests.sim.tools import run_cli
from tests.test_json_output import DOCS, schema_errors


@pytest.fixture(scope="module")
def provisioned(world, tmp_path_factory) -> Cabinet:
    cabinet = Cabinet(world, tmp_path_factory.mktemp("reports") / "device")
    cabinet.provision()
    return cabinet


@pytest.fixture
def cabinet(provisioned, tmp_path) -> Cabinet:
    """A fresh copy of one provisioned machine, with no device key yet."""
    return provisioned.copy(tmp_path / "device")


@pytest.fixture
def stick(tmp_path) -> Path:
    return tmp_path / "stick"


def _report_files(stick: Path) -> list[str]:
    folder = stick / "demo-cabinet" / "reports"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


# --- the device writes ---------------------------------------------------------------------------------------


def test_a_report_lands_on_the_stick_and_minisign_verifies_it(cabinet, stick, minisign):
    path = signed_report(cabinet, stick)
    assert path == stick / "demo-cabinet/reports/SN0001-00000001.json"
    assert _report_files(stick) == ["SN0001-00000001.json", "SN0001-00000001.json.minisig"]
    public = cabinet.dir / "state/identity/device.pub"
    result = subprocess.run([minisign, "-Vm", path, "-p", public], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "bundle device report serial=SN0001 counter=1" in result.stdout
    document = json.loads(path.read_bytes())
    schema = json.loads((DOCS / "device-report.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(document)]
    assert not errors, errors
    assert (document["serial"], document["product"], document["hardware"]) == ("SN0001", "demo-cabinet", "cab-a")
    assert set(document["components"]) == {"platform", "game/lucky-sevens"}
    assert [e["flags"] for e in document["environments"]] == ["NR"]
    assert document["trust_root_version"] == 1 and document["agent_version"] and document["problems"] == []
    events = [e["event"] for e in document["events"]]  # newest first
    assert events[events.index("provisioned") + 1] == "identity-created", "the key is made as it is provisioned"
    assert path.read_bytes() == json.dumps(document, sort_keys=True, indent=2).encode() + b"\n"  # canonical


def test_every_report_has_a_new_number_even_after_a_failed_write(cabinet, stick, monkeypatch):
    first = signed_report(cabinet, stick)
    device = open_device(cabinet)

    def pulled(*_args):  # the stick pulled after the number was spent
        raise agent.stick_file.Failed("cannot write: No such device")

    monkeypatch.setattr("agent.device_report.put_verified", pulled)
    with pytest.raises(agent.stick_file.Failed):
        write_report(device, stick)
    assert last_counter(device.state_dir) == 2  # durable before the report was signed: never reused
    monkeypatch.undo()
    third = write_report(device, stick)
    assert (first.name, third.name) == ("SN0001-00000001.json", "SN0001-00000003.json")
    assert (cabinet.dir / "state/report-counter").read_text() == "3\n"
    written = [r for r in device.audit.newest() if r["event"] == "report-written"]
    assert [r["counter"] for r in written] == [3, 1]


def test_no_device_key_spends_no_number_and_writes_nothing(cabinet, stick):
    shutil.rmtree(cabinet.dir / "state/identity")  # a machine provisioned before devices had keys
    stick.mkdir()
    with pytest.raises(NoIdentity, match="no device key") as error:
        write_report(open_device(cabinet), stick)
    assert "bundle-agent identity --create" in error.value.hint
    assert not (cabinet.dir / "state/report-counter").exists() and _report_files(stick) == []


def test_a_read_only_stick_is_named_before_a_number_is_spent(cabinet, stick, monkeypatch):
    signed_report(cabinet, stick)
    real = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(agent.stick_file.os, "statvfs", ReadOnly)
    with pytest.raises(StickReadOnly, match="read-only") as error:
        write_report(open_device(cabinet), stick)
    assert "read-write" in error.value.hint
    assert last_counter(open_device(cabinet).state_dir) == 1


def test_erofs_while_writing_is_named_and_leaves_nothing(cabinet, stick, monkeypatch):
    signed_report(cabinet, stick)
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and kwargs.get("dir_fd") is not None:  # on the stick only (os is shared)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(agent.stick_file.os, "open", read_only_open)
    with pytest.raises(StickReadOnly, match="read-only"):
        write_report(open_device(cabinet), stick)
    assert _report_files(stick) == ["SN0001-00000001.json", "SN0001-00000001.json.minisig"]


def test_a_stick_that_reads_back_other_bytes_gets_no_file_under_the_final_name(cabinet, stick, monkeypatch):
    signed_report(cabinet, stick)
    real = agent.stick_file._read_back
    def failing_stick(folder, name, size):
        data = real(folder, name, size)
        return bytes([data[0] ^ 1]) + data[1:]

    monkeypatch.setattr(agent.stick_file, "_read_back", failing_stick)
    with pytest.raises(StickReadBackFailed, match="other bytes"):
        write_report(open_device(cabinet), stick)
    assert _report_files(stick) == ["SN0001-00000001.json", "SN0001-00000001.json.minisig"]  # no temporary either


def test_a_symlinked_reports_folder_is_refused_and_nothing_is_written_through_it(cabinet, stick, tmp_path):
    ensure_identity(open_device(cabinet).state_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (stick / "demo-cabinet").mkdir(parents=True)
    (stick / "demo-cabinet/reports").symlink_to(elsewhere)
    with pytest.raises(StickLayoutError, match="not a plain folder"):
        write_report(open_device(cabinet), stick)
    assert list(elsewhere.iterdir()) == []


def test_a_machine_in_trouble_still_reports_what_it_can(cabinet, stick):
    (cabinet.dir / "state/state.json").write_text("{ damaged")
    (cabinet.dir / "trust/root.json").write_text("{}")
    document = json.loads(signed_report(cabinet, stick).read_bytes())
    assert document["trust_root_version"] is None and document["components"] == {}
    assert [p.split(":")[0] for p in document["problems"]] == ["state", "trust root"]


def test_a_serial_fat_cannot_name_is_escaped_in_the_file_name():
    assert serial_in_name("SN:0042") == "SN%3A0042" and serial_in_name(".hidden") == "%2Ehidden"
    assert report_name("SN:0042", 12) == "SN%3A0042-00000012.json"


def test_the_request_marker_is_a_plain_file_reached_without_symlinks(tmp_path):
    stick = tmp_path / "stick"
    folder = stick / "demo-cabinet/reports"
    assert not report_requested(stick, "demo-cabinet")
    folder.mkdir(parents=True)
    assert not report_requested(stick, "demo-cabinet")
    (folder / "REQUEST").write_bytes(b"")
    assert report_requested(stick, "demo-cabinet")
    assert not report_requested(stick, "other-product")
    (folder / "REQUEST").unlink()
    (folder / "REQUEST").symlink_to(tmp_path / "marker")
    (tmp_path / "marker").write_bytes(b"")
    assert not report_requested(stick, "demo-cabinet")  # a symlink asks nothing
    (folder / "REQUEST").unlink()
    os.mkfifo(folder / "REQUEST")
    assert not report_requested(stick, "demo-cabinet")  # and a FIFO neither, without hanging
    shutil.rmtree(stick / "demo-cabinet")
    (stick / "demo-cabinet").symlink_to(tmp_path / "marker-folder")
    (tmp_path / "marker-folder/reports").mkdir(parents=True)
    (tmp_path / "marker-folder/reports/REQUEST").write_bytes(b"")
    assert not report_requested(stick, "demo-cabinet")


def test_events_and_the_audit_are_bounded():
    events = [{"time": "t", "event": "examined", "source": "x" * 10_000, "n": i} for i in range(500)]
    audit = {"environment": "env-2", "clean": False,
             "components": {"platform": {"missing": [f"/usr/{i:06d}" * 20 for i in range(20_000)], "modified": [],
                                         "unexpected": [], "problem": None}}}
    data = build_report(serial="SN1", product="p", hardware="h", status={}, audit=audit, trust_root_version=3,
                        agent_version="1", events=events, counter=9)
    document = DeviceReport.from_bytes(data).document
    assert len(data) <= MAX_REPORT_BYTES
    assert len(document["events"]) <= DEFAULT_EVENTS and document["events"][0]["n"] == 0  # the newest kept
    assert len(json.dumps(document["events"])) <= EVENTS_BUDGET
    assert document["events_omitted"] == 500 - len(document["events"])
    small = [{"time": "t", "event": "booted", "n": i} for i in range(500)]
    kept, omitted = bounded_events(small)
    assert [e["n"] for e in kept] == list(range(DEFAULT_EVENTS)) and omitted == 500 - DEFAULT_EVENTS
    missing = document["audit"]["components"]["platform"]["missing"]
    assert missing[-1].startswith("... and ") and len(missing) < 20_000


# --- the vendor checks: pure decisions ---------------------------------------------------------------------


class Device:
    """A device key and the reports it signs, in memory."""

    def __init__(self, directory: Path, serial: str):
        from agent.state_dir import StateDir
        self.state = StateDir(directory)
        self.serial = serial
        self.key = ensure_identity(self.state)

    def report(self, counter: int, *, serial: str | None = None, **changes) -> tuple[bytes, Signature]:
        data = build_report(serial=serial or self.serial, product="p", hardware="h", status={}, audit=None,
                            trust_root_version=1, agent_version="1", events=[], counter=counter, **changes)
        return data, sign_report(self.state, data, self.serial, counter)


@pytest.fixture
def pair(tmp_path) -> tuple[Device, Device]:
    return Device(tmp_path / "a", "SN-A"), Device(tmp_path / "b", "SN-B")


def test_a_report_verifies_only_with_its_devices_registered_key(pair):
    a, b = pair
    data, signature = a.report(4)
    verified = verify_report(data, signature, a.key)
    assert (verified.serial, verified.counter, verified.key_id) == ("SN-A", 4, a.key.id)
    with pytest.raises(UnknownDevice, match="SN-A is not registered"):
        verify_report(data, signature, None)
    with pytest.raises(BadSignature, match="registered with key"):
        verify_report(data, signature, b.key)  # b's key registered under a's serial


def test_a_flipped_byte_anywhere_is_refused(pair):
    a, _ = pair
    data, signature = a.report(1)
    for position in range(0, len(data), max(1, len(data) // 97)):
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        with pytest.raises(Refused):
            verify_report(bytes(flipped), signature, a.key)
    raw = signature.to_bytes()
    for position in range(raw.index(b"\n") + 1, len(raw) - 1):  # the untrusted comment is not signed (minisign)
        flipped = bytearray(raw)
        flipped[position] ^= 0x01
        with pytest.raises(Refused):  # malformed, another claim, or a bad signature: never accepted
            changed = Signature.from_bytes(bytes(flipped))
            if changed == signature:  # base64's unused low bits of a last character: the same signature
                raise Refused("unchanged")
            verify_report(data, changed, a.key)


def test_a_report_that_says_another_device_or_number_than_its_signature_is_refused(pair):
    a, _ = pair
    data, _ = a.report(5, serial="SN-B")  # a's key signs "SN-A 5" over a report saying SN-B
    with pytest.raises(ReportMismatch, match="says device SN-B report 5"):
        verify_report(data, sign_report(a.state, data, "SN-A", 5), a.key)
    data, _ = a.report(5)
    with pytest.raises(ReportMismatch, match="report 6"):
        verify_report(data, sign_report(a.state, data, "SN-A", 6), a.key)
    with pytest.raises(MalformedReport):
        verify_report(b'{"type": "manifest"}', sign_report(a.state, b'{"type": "manifest"}', "SN-A", 1), a.key)


@pytest.mark.parametrize("order, recorded, replays", [
    ([1, 2, 3], {}, [None, None, None]),
    ([3, 1], {}, [None, 3]),
    ([2, 2], {}, [None, 2]),
    ([4, 5], {"SN-A": 4}, [4, None]),
    ([1, ("SN-B", 1)], {}, [None, None]),  # numbers are per device
])
def test_a_number_that_does_not_grow_is_a_replay(order, recorded, replays):
    def verified(item):
        serial, counter = item if isinstance(item, tuple) else ("SN-A", item)
        return VerifiedReport(report=DeviceReport(serial, "p", "h", counter, {}), key_id="K")
    assert find_replays([verified(item) for item in order], recorded) == replays


# --- bundle report verify | show, as the vendor runs them --------------------------------------------------


def test_verify_records_and_catches_replays_unknown_devices_and_damage(cabinet, world, stick, tmp_path):
    registry = tmp_path / "registry"
    first = signed_report(cabinet, stick, registry)
    second = signed_report(cabinet, stick)
    stranger = Cabinet(world, tmp_path / "stranger", serial="SN0002")  # configured, never registered
    signed_report(stranger, stick)
    folder = first.parent
    result = run_cli("bundle", "report", "verify", first, second, "--devices", registry, "--record")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 verified, 0 replayed, 0 refused" in result.stdout
    assert (registry / "SN0001.counter").read_text() == "2\n"
    # Shown again: both are old now. The stranger is unknown. All on 80 columns.
    result = run_cli("bundle", "report", "verify", folder, "--devices", registry)
    assert result.returncode == 3
    lines = result.stdout.splitlines()
    assert lines[0].startswith("replay    SN0001-00000001.json: device SN0001 report 1")
    assert any(line.startswith("refused   SN0002-00000001.json: claims device SN0002") for line in lines)
    assert "device SN0002 is not registered" in result.stdout and all(len(line) <= 80 for line in lines)
    assert "1 refused" in result.stderr
    # A flipped byte in a new, otherwise good report.
    third = signed_report(cabinet, stick)
    data = bytearray(third.read_bytes())
    data[data.index(b'"hardware"') + 14] ^= 0x01
    third.write_bytes(bytes(data))
    result = run_cli("bundle", "report", "verify", third, "--devices", registry, "--json")
    assert result.returncode == 3
    document = json.loads(result.stdout)
    assert not schema_errors("report-verify.schema.json", document), schema_errors("report-verify.schema.json",
                                                                                   document)
    assert document["ok"] is False and document["exit"] == 3 and document["counts"]["refused"] == 1
    assert document["reports"][0]["verdict"] == "refused" and "does not match" in document["reports"][0]["reason"]
    # Without its signature a report is refused too.
    (third.parent / (third.name + ".minisig")).unlink()
    result = run_cli("bundle", "report", "verify", third, "--devices", registry)
    assert result.returncode == 3 and "not signed" in result.stdout


def test_verify_json_lists_each_verdict(cabinet, stick, tmp_path):
    registry = tmp_path / "registry"
    report = signed_report(cabinet, stick, registry)
    result = run_cli("bundle", "report", "verify", report, "--devices", registry, "--json", "--record")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert not schema_errors("report-verify.schema.json", document)
    assert document["reports"][0]["verdict"] == "verified" and document["recorded"] == {"SN0001": 1}


def test_show_says_what_the_report_says_and_that_it_is_not_verified(cabinet, stick):
    report = signed_report(cabinet, stick)
    result = run_cli("bundle", "report", "show", report)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "report 1 of device SN0001 (demo-cabinet, cab-a)"
    assert "not verified: use bundle report verify" in result.stdout
    assert "  platform: 13.2.0 (sequence 6)" in lines and "audit: none made for this report" in lines
    assert any("identity-created" in line for line in lines) and all(len(line) <= 80 for line in lines)
    document = json.loads(run_cli("bundle", "report", "show", report, "--json").stdout)
    assert not schema_errors("report-show.schema.json", document)
    assert document["verified"] is False and document["report"]["counter"] == 1
    junk = report.with_name("junk.json")
    junk.write_text('{"type": "manifest", "format": 1}')
    result = run_cli("bundle", "report", "show", junk)
    assert result.returncode == 3 and "not a device report" in result.stderr
