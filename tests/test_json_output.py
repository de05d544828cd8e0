"""Every reporting command's ``--json``, success and failure, against its schema in docs/json/.

Each case runs the real command as an operator or a unit would; its stdout must be one JSON
document valid against the schema docs/json/README.md names for it, ``ok`` and ``version`` in
it, and a failure must print docs/json/error.schema.json on stdout with the process's exit code,
while the text for people still goes to stderr.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import jsonschema
import pytest

from tests.sim.device import Cabinet, World
from tests.sim.new_root import NewRoot, put_token
from tests.sim.reports import signed_report
from tests.sim.tools import run_cli

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMAS = DOCS / "json"


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(name: str, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(document)]


def replacement_stick(world: World, directory: Path) -> Path:
    """A stick with a new trust root (version 2, its root keys made from scratch) and a token allowing
    the machine's root to be replaced with exactly it."""
    new_root = NewRoot.make(directory, 2)
    stick = directory / "stick"
    new_root.put(stick, 2)
    put_token(world, directory, stick, "replace-trust-root", trust_root=new_root.root)
    return stick


class Scene:
    """The demo world, a stick, a tampered bundle, a signed file and provisioned devices, made once."""

    def __init__(self, world: World, directory: Path):
        self.world, self.dir = world, directory
        self.stick = world.stick(directory / "stick", "d12")
        self.tampered = directory / "tampered"
        shutil.copytree(world.bundles / "d12", self.tampered)
        volume = next(self.tampered.rglob("*.vol"))
        data = bytearray(volume.read_bytes())
        data[len(data) // 2] ^= 1
        volume.write_bytes(bytes(data))
        self.junk_root = directory / "junk-root.json"
        self.junk_root.write_text("{}")
        self.file = directory / "signed.txt"
        self.file.write_text("a release note\n")
        run_cli("bundle", "keys", "sign", self.file, "--key", world.keys / "rel1.key", check=True)
        self.forged = directory / "forged.txt"
        self.forged.write_text("a release note, changed\n")
        shutil.copy(directory / "signed.txt.minisig", directory / "forged.txt.minisig")
        self.devices = 0

    def device(self, *, provisioned: bool = True, healthy: bool = True) -> Cabinet:
        self.devices += 1
        cabinet = Cabinet(self.world, self.dir / f"device-{self.devices}", healthy=healthy)
        if provisioned:
            cabinet.provision()
        return cabinet

    def committed(self) -> Cabinet:
        """A device that installed d12 and committed it (env-2; env-1 the previous)."""
        cabinet = self.trial(healthy=True)
        cabinet.agent("boot-check", check=True)
        return cabinet

    def trial(self, *, healthy: bool) -> Cabinet:
        """A device that staged d12 and rebooted into its trial."""
        cabinet = self.device(healthy=healthy)
        assert cabinet.agent("install", self.stick).returncode == 4
        cabinet.agent("boot", check=True)
        return cabinet


@pytest.fixture(scope="module")
def scene(world, tmp_path_factory) -> Scene:
    return Scene(world, tmp_path_factory.mktemp("json"))


Case = Callable[[Scene], subprocess.CompletedProcess]

# name -> (schema of the success document, expected exit, the command)
SUCCESSES: dict[str, tuple[str, int, Case]] = {
    "bundle make": ("bundle-summary.schema.json", 0, lambda s: run_cli(
        "bundle", "make", "--release", s.world.release("r2"), "--out", s.dir / "made", "--level", "3",
        "--key", s.world.keys / "rel1.key", "--key", s.world.keys / "rel2.key", "--json")),
    "bundle inspect": ("bundle-summary.schema.json", 0, lambda s: run_cli(
        "bundle", "inspect", s.world.bundles / "d12", "--json")),
    "bundle inspect --root": ("bundle-summary.schema.json", 0, lambda s: run_cli(
        "bundle", "inspect", s.world.bundles / "d12", "--root", s.world.root, "--json")),
    "bundle verify": ("bundle-verify.schema.json", 0, lambda s: run_cli(
        "bundle", "verify", s.world.bundles / "d12", "--root", s.world.root, "--json")),
    "bundle inspect STICK": ("stick-inspect.schema.json", 0, lambda s: run_cli(
        "bundle", "inspect", s.stick, "--root", s.world.root, "--json")),
    "bundle verify STICK": ("stick-verify.schema.json", 0, lambda s: run_cli(
        "bundle", "verify", s.stick, "--root", s.world.root, "--json")),
    "bundle write": ("stick-write.schema.json", 0, lambda s: run_cli(
        "bundle", "write", (s.dir / "stick-2").mkdir() or s.dir / "stick-2", s.world.bundles / "full-1",
        "--root", s.world.root, "--json")),
    "bundle sign": ("sign.schema.json", 0, lambda s: run_cli(
        "bundle", "sign", shutil.copytree(s.world.bundles / "d12", s.dir / "to-sign"), "--key",
        s.world.keys / "rel3.key", "--root", s.world.root, "--json")),
    "bundle root sign": ("sign.schema.json", 0, lambda s: run_cli(
        "bundle", "root", "sign", shutil.copy(s.world.root, s.dir / "root-copy.json"), "--key",
        s.world.keys / "root1.key", "--json")),
    "bundle keys new": ("files.schema.json", 0, lambda s: run_cli(
        "bundle", "keys", "new", "fresh", "--dir", s.dir / "new-keys", "--no-passphrase", "--json")),
    "bundle keys sign": ("files.schema.json", 0, lambda s: run_cli(
        "bundle", "keys", "sign", shutil.copy(s.file, s.dir / "to-sign.txt"), "--key", s.world.keys / "rel1.key",
        "--json")),
    "bundle keys passphrase": ("files.schema.json", 0, lambda s: run_cli(
        "bundle", "keys", "passphrase", shutil.copy(s.world.keys / "rel3.key", s.dir / "rel3-copy.key"),
        "--no-passphrase", "--json")),
    "bundle root new": ("files.schema.json", 0, lambda s: run_cli(
        "bundle", "root", "new", "--out", s.dir / "root-new.json", "--root-key", s.world.keys / "root1.pub",
        "--signer", s.world.keys / "rel1.pub", "--json")),
    "bundle root rotate": ("files.schema.json", 0, lambda s: run_cli(
        "bundle", "root", "rotate", "--from", s.world.root, "--out", s.dir / "root-2.json", "--remove-signer",
        s.world.keys / "rel2.pub", "--threshold", "1", "--json")),
    "bundle keys verify": ("keys-verify.schema.json", 0, lambda s: run_cli(
        "bundle", "keys", "verify", s.file, "--pub", s.world.keys / "rel1.pub", "--json")),
    "bundle root verify": ("root-verify.schema.json", 0, lambda s: run_cli(
        "bundle", "root", "verify", s.world.root, "--json")),
    "bundle token make": ("token.schema.json", 0, lambda s: run_cli(
        "bundle", "token", "make", "--product", "demo-cabinet", "--serial", "SN0001", "--allow", "clear-state",
        "--key", s.world.keys / "rel1.key", "--out", s.dir / "tokens", "--root", s.world.root, "--json")),
    "bundle-agent root verify": ("root-verify.schema.json", 0, lambda s: run_cli(
        "bundle-agent", "root", "verify", s.world.root, "--json")),
    "bundle-agent provision": ("report.schema.json", 0, lambda s: s.device(provisioned=False).agent(
        "provision", s.world.bundles / "full-1", "--json")),
    "bundle-agent status": ("status.schema.json", 0, lambda s: s.device().agent("status", "--json")),
    "bundle-agent install": ("report.schema.json", 4, lambda s: s.device().agent("install", s.stick, "--json")),
    "bundle-agent install (up to date)": ("report.schema.json", 0, lambda s: s.device().agent(
        "install", s.world.bundles / "full-1", "--json")),
    "bundle-agent on-insert": ("report.schema.json", 4, lambda s: s.device().agent("on-insert", s.stick, "--json")),
    "bundle-agent boot-check": ("message.schema.json", 0, lambda s: s.trial(healthy=True).agent(
        "boot-check", "--json")),
    "bundle-agent rollback": ("message.schema.json", 0, lambda s: s.trial(healthy=True).agent("rollback", "--json")),
    "bundle-agent config check": ("config-check.schema.json", 0, lambda s: s.device(provisioned=False).agent(
        "config", "check", "--json")),
    "bundle-agent log": ("log.schema.json", 0, lambda s: s.trial(healthy=True).agent("log", "-n", "5", "--json")),
    "bundle-agent identity": ("identity.schema.json", 0, lambda s: s.device().agent("identity", "--create", "--json")),
    "bundle report verify": ("report-verify.schema.json", 0, lambda s: run_cli(
        "bundle", "report", "verify", signed_report(s.device(), s.dir / "report-stick", s.dir / "registry"),
        "--devices", s.dir / "registry", "--json")),
    "bundle report show": ("report-show.schema.json", 0, lambda s: run_cli(
        "bundle", "report", "show", signed_report(s.device(), s.dir / "show-stick"), "--json")),
    "bundle-agent technician status": ("technician-status.schema.json", 0, lambda s: s.device().agent(
        "technician", "status", "--json")),
    "bundle-agent technician stick": ("technician-stick.schema.json", 0, lambda s: s.device().agent(
        "technician", "stick", s.stick, "--json")),
    "bundle-agent technician audit": ("technician-audit.schema.json", 0, lambda s: s.device().agent(
        "technician", "audit", "--json")),
    "bundle-agent technician rollback": ("message.schema.json", 4, lambda s: s.committed().agent(
        "technician", "rollback", "--json")),
    "bundle-agent technician replace-root": ("message.schema.json", 0, lambda s: s.device().agent(
        "technician", "replace-root", replacement_stick(s.world, s.dir / "replace-root"), "--json")),
    "bundle-agent technician report": ("files.schema.json", 0, lambda s: s.device().agent(
        "technician", "report", (s.dir / "report-out").mkdir(exist_ok=True) or s.dir / "report-out", "--json")),
}

# name -> (expected exit, the command): each prints error.schema.json
FAILURES: dict[str, tuple[int, Case]] = {
    "bundle make, no such release": (2, lambda s: run_cli(
        "bundle", "make", "--release", s.dir / "missing.toml", "--out", s.dir / "x", "--key",
        s.world.keys / "rel1.key", "--json")),
    "bundle inspect, not a bundle": (1, lambda s: run_cli(
        "bundle", "inspect", (s.dir / "empty").mkdir(exist_ok=True) or s.dir / "empty", "--json")),
    "bundle verify, a flipped bit": (3, lambda s: run_cli(
        "bundle", "verify", s.tampered, "--root", s.world.root, "--json")),
    "bundle write, a flipped bit": (3, lambda s: run_cli(
        "bundle", "write", (s.dir / "stick-3").mkdir() or s.dir / "stick-3", s.tampered, "--root", s.world.root,
        "--json")),
    "bundle sign, not a bundle": (1, lambda s: run_cli(
        "bundle", "sign", (s.dir / "empty").mkdir(exist_ok=True) or s.dir / "empty", "--key",
        s.world.keys / "rel1.key", "--json")),
    "bundle root sign, not a root": (3, lambda s: run_cli(
        "bundle", "root", "sign", s.junk_root, "--key", s.world.keys / "root1.key", "--json")),
    "bundle keys new, exists already": (1, lambda s: run_cli(
        "bundle", "keys", "new", "rel1", "--dir", s.world.keys, "--no-passphrase", "--json")),
    "bundle root new, a threshold above its keys": (3, lambda s: run_cli(
        "bundle", "root", "new", "--out", s.dir / "root-bad.json", "--root-key", s.world.keys / "root1.pub",
        "--signer", s.world.keys / "rel1.pub", "--threshold", "2", "--json")),
    "bundle keys verify, a changed file": (3, lambda s: run_cli(
        "bundle", "keys", "verify", s.forged, "--pub", s.world.keys / "rel1.pub", "--json")),
    "bundle root verify, not a root": (3, lambda s: run_cli("bundle", "root", "verify", s.junk_root, "--json")),
    "bundle token sign, not a token": (3, lambda s: run_cli(
        "bundle", "token", "sign", s.junk_root, "--key", s.world.keys / "rel1.key", "--json")),
    "bundle-agent root verify, not a root": (3, lambda s: run_cli(
        "bundle-agent", "root", "verify", s.junk_root, "--json")),
    "bundle-agent status, no configuration": (1, lambda s: run_cli(
        "bundle-agent", "--config", s.dir / "missing.toml", "status", "--json")),
    "bundle-agent config check, no configuration": (1, lambda s: run_cli(
        "bundle-agent", "--config", s.dir / "missing.toml", "config", "check", "--json")),
    "bundle-agent install, a flipped bit": (3, lambda s: s.device().agent("install", s.tampered, "--json")),
    "bundle-agent on-insert, a usage error": (2, lambda s: s.device(provisioned=False).agent(
        "on-insert", s.dir / "no-such-stick", "--json")),
    "bundle-agent provision, already provisioned": (3, lambda s: s.device().agent(
        "provision", s.world.bundles / "full-1", "--json")),
    "bundle-agent boot-check, rolled back": (3, lambda s: s.trial(healthy=False).agent("boot-check", "--json")),
    "bundle-agent identity, no device key": (1, lambda s: s.device(provisioned=False).agent("identity", "--json")),
    "bundle report show, not a report": (3, lambda s: run_cli("bundle", "report", "show", s.junk_root, "--json")),
}


@pytest.mark.parametrize("name", SUCCESSES)
def test_success_matches_its_schema(scene, name):
    schema, code, run = SUCCESSES[name]
    result = run(scene)
    assert result.returncode == code, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True and document["version"] == 1
    assert not schema_errors(schema, document), schema_errors(schema, document)


@pytest.mark.parametrize("name", FAILURES)
def test_failure_prints_the_error_document(scene, name):
    code, run = FAILURES[name]
    result = run(scene)
    assert result.returncode == code, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert not schema_errors("error.schema.json", document), schema_errors("error.schema.json", document)
    assert document["exit"] == code and document["refused"] is (code == 3)
    assert document["error"] in result.stderr or "Error:" in result.stderr  # the text for people is still there


def test_every_schema_is_named_in_the_readme_and_used():
    readme = (SCHEMAS / "README.md").read_text(encoding="utf-8")
    used = {schema for schema, _, _ in SUCCESSES.values()} | {"error.schema.json"}
    for path in SCHEMAS.glob("*.schema.json"):
        validator(path.name)  # a valid JSON Schema
        assert path.name in readme, f"docs/json/README.md does not list {path.name}"
        assert path.name in used, f"no test runs a command that prints {path.name}"


def test_a_schema_refuses_what_the_commands_never_print():
    """The schemas are not vacuous: a report without its outcome, or an error that says ok, fails."""
    assert schema_errors("report.schema.json", {"ok": True, "version": 1, "message": "x"})
    assert schema_errors("error.schema.json", {"ok": True, "version": 1, "error": "x", "where": None,
                                               "hint": None, "exit": 1, "refused": False})
    assert schema_errors("status.schema.json", {"ok": True, "version": 2})
