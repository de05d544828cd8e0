"""Technician tokens (docs/TRUST.md, "Technician tokens"): the pure decision, the stick, the record
of used ids, and `bundle token make | sign` end to end.

The decision cases are a data table over one honest token: each changes one thing (the machine,
the action, a byte, who signed) and names the error. The stick cases write real files into a
stick folder and ask a real device (agent/device.py on a system root); each asserts the error
*and* that the device did not change (no id spent, nothing in the record of used tokens).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pytest

from agent.choice import DeviceFacts
from agent.config import load_config
from agent.device import Device
from agent.format.stick import StickLayoutError
from agent.format.token import (MAX_STICK_TOKENS, MAX_TOKEN_BYTES, ActionNotAllowed, MalformedToken,
                                TechnicianToken, TokenAlreadyUsed, TokenNotForThisMachine, new_id, verify_token)
from agent.tokens import (MAX_USED_IDS, NoToken, TokenRecordDamaged, TokenRecordFull, TooManyTokens, find_token,
                          require_token, spend_token)
from keys.detached import signature_path
from keys.errors import Refused, ThresholdNotMet
from keys.rotation import trust_anchor
from tests.sim.keyring import Keyring
from tests.test_json_output import schema_errors
from tests.sim.tools import run_cli

PRODUCT, SERIAL = "demo-cabinet", "SN0001"
FACTS = DeviceFacts(product=PRODUCT, hardware="cab-a", serial=SERIAL)
CONFIG = f"""\
[device]
product = "{PRODUCT}"
hardware = "cab-a"
serial = "{SERIAL}"
state_dir = "/state"
[trust]
root = "/trust/root.json"
[boot]
backend = "dirs"
root = "/envs"
"""


def honest(**changes) -> TechnicianToken:
    fields = dict(id=new_id(), product=PRODUCT, serials=(SERIAL,), actions=("downgrade", "clear-state"),
                  downgrade=(("platform", 3),), reason="ticket 4711")
    return TechnicianToken(**{**fields, **changes})


class Scene:
    """A trust root (release signers rel1-3, threshold 2; key ``old`` revoked), a device provisioned
    with it on a system root, and a stick folder tokens are written to."""

    def __init__(self, directory: Path, ring: Keyring):
        self.ring = ring
        root = ring.root(1, ("root1",), 1, signers=("rel1", "rel2", "rel3"), threshold=2, revoked=("old",))
        candidate = ring.candidate(root, ("root1",))
        self.root = trust_anchor(candidate)
        self.sysroot = directory / "device"
        trust = self.sysroot / "trust"
        trust.mkdir(parents=True)
        (trust / "root.json").write_bytes(candidate.raw)
        for signature in candidate.signatures:
            signature_path(trust / "root.json", signature.key_id_text).write_bytes(signature.to_bytes())
        (self.sysroot / "envs").mkdir()
        (self.sysroot / "agent.toml").write_text(CONFIG)
        self.stick = directory / "stick"
        self.tokens = self.stick / PRODUCT / "tokens"
        self.tokens.mkdir(parents=True)

    def device(self) -> Device:
        return Device.open(load_config(Path("/agent.toml"), system_root=self.sysroot))

    def put(self, token: TechnicianToken, signers=("rel1", "rel2"), *, data: bytes | None = None) -> Path:
        """Write ``token`` (or ``data`` in its place) and one signature per signer to the stick."""
        raw = token.to_bytes() if data is None else data
        path = self.tokens / token.file_name
        path.write_bytes(raw)
        for signature in self.ring.sign(raw, signers):
            signature_path(path, signature.key_id_text).write_bytes(signature.to_bytes())
        return path

    @property
    def record(self) -> Path:
        return self.sysroot / "state" / "tokens-used.json"

    def spent(self) -> list[str]:
        return [e["id"] for e in json.loads(self.record.read_bytes())["used"]] if self.record.exists() else []

    def audit(self, event: str) -> list[dict]:
        return [r for r in self.device().audit.newest() if r.get("event") == event]


@pytest.fixture
def scene(tmp_path) -> Scene:
    return Scene(tmp_path, Keyring())


# --- the decision, pure ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One change to an honest token and its 2-of-3 signatures, and the error it must give."""

    error: type[Exception] | None
    text: str = ""
    token: Callable[[TechnicianToken], TechnicianToken] = lambda t: t
    data: Callable[[bytes], bytes] = lambda d: d  # before signing: signed as changed
    tamper: Callable[[bytes], bytes] = lambda d: d  # after signing
    signers: tuple[str, ...] = ("rel1", "rel2")
    facts: DeviceFacts = FACTS
    action: str = "downgrade"
    detail: dict | None = None
    used: bool = False


def _flip(data: bytes) -> bytes:
    index = data.index(b"ticket")
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1:]


DECISIONS = {
    "honest": Case(None),
    "every serial": Case(None, token=lambda t: replace(t, serials=("*",)), facts=replace(FACTS, serial="SN9999")),
    "another product": Case(TokenNotForThisMachine, "is for product other-game",
                            token=lambda t: replace(t, product="other-game")),
    "another serial": Case(TokenNotForThisMachine, "does not list this machine's serial SN0002",
                           facts=replace(FACTS, serial="SN0002")),
    "an action not allowed": Case(ActionNotAllowed, "not provision", action="provision"),
    "another downgrade sequence": Case(ActionNotAllowed, "allows platform back to sequence 3 only",
                                       detail={"platform": 2}),
    "a downgrade of another component": Case(ActionNotAllowed, "allows no downgrade of game/poker",
                                             detail={"platform": 3, "game/poker": 1}),
    "a flipped byte": Case(ThresholdNotMet, "signed by 0 of 2", tamper=_flip),
    "too few signers": Case(ThresholdNotMet, "signed by 1 of 2 required release signers", signers=("rel1",)),
    "the same signer twice": Case(ThresholdNotMet, "signed by 1 of 2", signers=("rel1", "rel1")),
    "a revoked signer": Case(ThresholdNotMet, "ignored, revoked: old", signers=("rel1", "old")),
    "a signer the root does not know": Case(ThresholdNotMet, "not in this role", signers=("rel1", "stranger")),
    "used before": Case(TokenAlreadyUsed, "already used on this machine", used=True),
    "another signed document type": Case(MalformedToken, "not 'technician-token'",
                                         data=lambda d: d.replace(b'"technician-token"', b'"bundle-manifest"')),
    "an unknown field": Case(MalformedToken, "unknown field",
                             data=lambda d: d.replace(b'"format": 1', b'"format": 1, "expires": 0')),
}


@pytest.mark.parametrize("name", DECISIONS)
def test_a_token_allows_only_what_it_names_signed_by_the_threshold(scene, name):
    case = DECISIONS[name]
    token = case.token(honest())
    data = case.data(token.to_bytes())
    signatures = scene.ring.sign(data, case.signers)
    data = case.tamper(data)
    detail = case.detail if case.detail is not None else {"platform": 3} if case.action == "downgrade" else None
    used = {token.id} if case.used else {new_id()}
    if case.error is None:
        verified = verify_token(data, signatures, scene.root, case.facts, case.action, used, detail=detail)
        assert verified.id == token.id and verified.raw == data and verified.signers.met
        return
    with pytest.raises(case.error, match=case.text) as raised:
        verify_token(data, signatures, scene.root, case.facts, case.action, used, detail=detail)
    assert raised.value.hint


def test_signatures_are_checked_before_the_document_is_parsed(scene):
    """An unsigned document is never parsed: garbage with too few signatures is a threshold refusal."""
    with pytest.raises(ThresholdNotMet):
        verify_token(b"{not json", [], scene.root, FACTS, "clear-state", set())


@pytest.mark.parametrize("change, text", [
    (dict(serials=("*", SERIAL)), "cannot be listed with serials"),
    (dict(serials=()), "at least one serial"),
    (dict(actions=("clear-state",)), "exactly when the actions include"),
    (dict(actions=("downgrade", "reboot")), "unknown action"),
    (dict(product="bad product"), "not a valid product"),
    (dict(reason="two\nlines"), "one line"),
    (dict(downgrade=(("platform", -1),)), "non-negative"),
])
def test_a_token_that_cannot_be_made(change, text):
    with pytest.raises(ValueError, match=text):
        honest(**change)


def test_any_flipped_byte_is_a_malformed_token_or_a_valid_one():
    """Hostile input by design: every single-byte change parses or raises MalformedToken, nothing else."""
    data = honest().to_bytes()
    for index in range(len(data)):
        for bit in (0x01, 0x20, 0x80):
            changed = data[:index] + bytes([data[index] ^ bit]) + data[index + 1:]
            try:
                TechnicianToken.from_bytes(changed)
            except MalformedToken:
                pass
    with pytest.raises(MalformedToken, match="larger than"):
        TechnicianToken.from_bytes(b" " * (MAX_TOKEN_BYTES + 1))


def test_the_bytes_are_canonical(scene):
    token = honest(serials=("SN0002", SERIAL), actions=("clear-state", "downgrade"))
    assert TechnicianToken.from_bytes(token.to_bytes()) == token
    assert token.actions == ("downgrade", "clear-state") and token.serials == (SERIAL, "SN0002")


# --- the stick and the record of used ids -----------------------------------------------------------


def test_a_token_is_spent_once_and_audited(scene):
    token = honest()
    scene.put(token)
    device = scene.device()
    verified = require_token(device, scene.stick, "downgrade", {"platform": 3})
    spend_token(device, verified, "downgrade")
    assert scene.spent() == [token.id]
    assert [(r["token"], r["action"]) for r in scene.audit("token-used")] == [(token.id, "downgrade")]
    # Used once: refused for every action it allows, and the record survives a damaged state.json.
    (scene.sysroot / "state" / "state.json").write_bytes(b"\x00garbage")
    assert find_token(scene.device(), scene.stick, "clear-state") is None
    with pytest.raises(TokenAlreadyUsed, match=f"token {token.id} was already used"):
        require_token(scene.device(), scene.stick, "clear-state")
    with pytest.raises(TokenAlreadyUsed):  # spending a verified token twice is refused too
        spend_token(device, verified, "downgrade")
    assert scene.spent() == [token.id]
    assert scene.audit("token-refused")[0]["action"] == "clear-state"


def test_the_token_for_this_machine_is_found_among_others(scene):
    scene.put(honest(product="other-game"))
    scene.put(honest(serials=("SN0002",)))
    wanted = honest(serials=("*",), actions=("provision",), downgrade=())
    scene.put(wanted)
    assert require_token(scene.device(), scene.stick, "provision").id == wanted.id
    (scene.tokens / f"._{wanted.file_name}").write_bytes(b"\x00\x05\x16\x07")  # macOS junk is ignored
    assert find_token(scene.device(), scene.stick, "provision").id == wanted.id


def _unchanged(scene: Scene) -> None:
    assert not scene.record.exists() and scene.audit("token-used") == []


def test_no_token_says_what_to_put_on_the_stick(scene):
    with pytest.raises(NoToken) as raised:
        require_token(scene.device(), scene.stick, "clear-state")
    assert "allowing clear-state for serial SN0001" in raised.value.hint
    scene.put(honest(product="other-game"))
    scene.put(honest(serials=("SN0002",)))
    with pytest.raises(NoToken, match="none of the 2 technician tokens .*other-game.*SN0001"):
        require_token(scene.device(), scene.stick, "clear-state")
    _unchanged(scene)


def test_a_token_for_another_machine_on_the_stick(scene):
    scene.put(honest(serials=("SN0002",)))
    with pytest.raises(TokenNotForThisMachine):
        require_token(scene.device(), scene.stick, "clear-state")
    _unchanged(scene)


def test_a_symlinked_token_folder_is_refused(scene, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    scene.tokens.rename(elsewhere)
    scene.tokens.symlink_to(elsewhere)  # an honest token, reached only through the link
    scene.put(honest())
    assert os.listdir(elsewhere)
    with pytest.raises(StickLayoutError, match="not a plain folder"):
        require_token(scene.device(), scene.stick, "clear-state")
    _unchanged(scene)


def test_a_symlinked_product_folder_is_refused(scene, tmp_path):
    scene.put(honest())
    (scene.stick / PRODUCT).rename(tmp_path / "product")
    (scene.stick / PRODUCT).symlink_to(tmp_path / "product")
    with pytest.raises(StickLayoutError, match="not a plain folder"):
        require_token(scene.device(), scene.stick, "clear-state")
    _unchanged(scene)


def test_a_symlinked_token_file_is_not_followed(scene, tmp_path):
    token = honest()
    path = scene.put(token)
    path.rename(tmp_path / "real.json")
    path.symlink_to(tmp_path / "real.json")
    with pytest.raises(Refused, match="not a regular file"):
        require_token(scene.device(), scene.stick, "clear-state")
    _unchanged(scene)


def test_too_many_token_files_refuse_the_folder_before_any_is_read(scene):
    for _ in range(MAX_STICK_TOKENS):
        scene.put(honest(serials=("SN0002",)))
    scene.put(honest())
    with pytest.raises(TooManyTokens, match=f"holds {MAX_STICK_TOKENS + 1} token files"):
        require_token(scene.device(), scene.stick, "clear-state")
    _unchanged(scene)


def test_an_oversize_token_file_is_refused_unread(scene):
    token = honest()
    data = token.to_bytes()
    scene.put(token, data=data + b" " * (MAX_TOKEN_BYTES + 1 - len(data)))  # valid JSON, signed, too large
    with pytest.raises(Refused, match=f"^{scene.tokens}/{token.file_name}: token is larger than the "
                                      f"{MAX_TOKEN_BYTES}-byte limit") as raised:
        require_token(scene.device(), scene.stick, "clear-state")
    assert not isinstance(raised.value, MalformedToken)  # refused from its size, never parsed
    _unchanged(scene)


def test_a_damaged_record_of_used_tokens_refuses_every_token(scene):
    scene.put(honest())
    scene.record.parent.mkdir()
    scene.record.write_bytes(b'{"format": 1, "used": [{"id": "x"')
    with pytest.raises(TokenRecordDamaged, match="damaged") as raised:
        require_token(scene.device(), scene.stick, "clear-state")
    assert "never reset" in raised.value.hint


def test_the_record_of_used_tokens_is_bounded(scene):
    token = honest()
    scene.put(token)
    scene.record.parent.mkdir()
    used = [{"id": new_id(), "action": "clear-state"} for _ in range(MAX_USED_IDS)]
    scene.record.write_text(json.dumps({"format": 1, "used": used}))
    device = scene.device()
    verified = require_token(device, scene.stick, "clear-state")
    with pytest.raises(TokenRecordFull, match=f"recorded {MAX_USED_IDS} used"):
        spend_token(device, verified, "clear-state")
    assert token.id not in scene.spent()


# --- the vendor's commands, end to end ------------------------------------------------------------


def test_bundle_token_make_and_sign_round_trip(trust, tmp_path):
    """`bundle token make` with one real key, `bundle token sign` with a second (2-of-2): the device
    accepts the token once and refuses it the second time."""
    out = tmp_path / "made"
    made = run_cli("bundle", "token", "make", "--product", PRODUCT, "--serial", SERIAL, "--allow", "clear-state",
                   "--reason", "reels stuck", "--key", trust.key("rel1"), "--out", out, "--root", trust.root,
                   "--json", check=True)
    document = json.loads(made.stdout)
    assert not schema_errors("token.schema.json", document)
    path = Path(document["token"])
    assert path == out / f"{document['id']}.json" and document["signers"]["met"] is False
    signed = run_cli("bundle", "token", "sign", path, "--key", trust.key("rel2"), "--root", trust.root, "--json",
                     check=True)
    assert json.loads(signed.stdout)["signers"]["met"] is True
    assert not schema_errors("sign.schema.json", json.loads(signed.stdout))

    sysroot = tmp_path / "device"
    (sysroot / "trust").mkdir(parents=True)
    for source in trust.directory.glob("root.json*"):
        shutil.copy(source, sysroot / "trust" / source.name)
    (sysroot / "envs").mkdir()
    (sysroot / "agent.toml").write_text(CONFIG)
    stick = tmp_path / "stick"
    shutil.copytree(out, stick / PRODUCT / "tokens")  # what docs/STICK.md, "Tokens" tells the vendor to do
    device = Device.open(load_config(Path("/agent.toml"), system_root=sysroot))
    verified = require_token(device, stick, "clear-state")
    assert verified.id == document["id"] and verified.token.reason == "reels stuck"
    spend_token(device, verified, "clear-state")
    with pytest.raises(TokenAlreadyUsed):
        require_token(Device.open(load_config(Path("/agent.toml"), system_root=sysroot)), stick, "clear-state")


def test_bundle_token_make_refuses_what_it_cannot_make(trust, tmp_path):
    def make(*args):
        return run_cli("bundle", "token", "make", "--product", PRODUCT, "--key", trust.key("rel1"),
                       "--out", tmp_path / "out", *args)
    assert make("--allow", "clear-state").returncode == 2  # neither --serial nor --all-serials
    assert make("--serial", SERIAL, "--all-serials", "--allow", "clear-state").returncode == 2
    assert make("--serial", SERIAL, "--allow", "downgrade").returncode == 2  # to which sequence?
    assert make("--serial", SERIAL, "--allow", "clear-state", "--downgrade", "platform=2").returncode == 2
    bad = make("--serial", "bad serial", "--allow", "clear-state")
    assert bad.returncode == 3 and "not a valid serial" in bad.stderr
    assert not (tmp_path / "out").exists()


def test_bundle_token_sign_refuses_a_renamed_or_forged_token(trust, tmp_path):
    (tmp_path / "renamed.json").write_bytes(honest().to_bytes())
    result = run_cli("bundle", "token", "sign", tmp_path / "renamed.json", "--key", trust.key("rel1"))
    assert result.returncode == 3 and "does not match the token's id" in result.stderr
    forged = tmp_path / f"{new_id()}.json"
    forged.write_bytes(b'{"type": "bundle-manifest"}')
    result = run_cli("bundle", "token", "sign", forged, "--key", trust.key("rel1"))
    assert result.returncode == 3 and "not a valid technician token" in result.stderr
    assert list(tmp_path.glob("*.minisig")) == []

