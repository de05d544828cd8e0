"""Power cuts at every durable write of install, boot, boot-check, rollback and provision (issue 5).

The harness (tests/sim/power_cut.py) kills the agent with SIGKILL at each crash point in turn, reboots
the device (``boot``, ``boot-check``) and checks that it boots a complete environment holding what
the committed state says, that no good environment was lost, that the state parses, and that a
retry reaches the expected release. ``make test`` checks a deterministic sample of the points;
``make crash-test`` (``BUNDLE_FULL_CRASH_SWEEP=1``) checks all of them. Both print
``power cuts: N injected, N unbootable, N lost environments``.

Most points are the staging of single files, one point per file written, so besides the demo
releases (a handful of files) the releases m1 -> m2 -> m3 carry LOCALES more files that change in
every release: a delta, a chain and a provisioning then pass a few hundred points each.
"""

from __future__ import annotations

import shutil

import pytest

from tests.sim.device import Cabinet, World
from tests.sim.power_cut import FULL_SWEEP, Release, Scenario, sweep
from tests.sim.releases import put, write_release

LOCALES = 220  # platform files that change in every m-release: 1,000+ crash points in all
SAMPLE_EVERY = 30  # make test: every 30th point, and both sides of each boot record, state and journal rename
SAMPLE_EVERY_MANY = 60  # the many-file scenarios write the same records: their sample is files being staged
# docs/AGENT.md's whole-system layout: the platform is the environment's root, the games nested in it.
WHOLE_SYSTEM = {"platform": ".", "games": "usr/local/games", "preserve": ["etc/ssh"]}


def _with_locales(world: World, source: str, name: str, release: int) -> None:
    shutil.copytree(world.dir / source, world.dir / name, symlinks=True)
    for i in range(LOCALES):
        put(world.dir / name / "platform", f"usr/share/locale/l{i:03}/LC_MESSAGES/cabinet.mo",
            f"msgid \"reel {i}\"\nmsgstr \"release {release}\"\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """The demo releases r1, r2 and r3 (r2 with one platform file changed): full-1, full-2, the
    deltas d12 and d23; m1, m2, m3 (r1, r2, r3 with LOCALES changing files): full-m1, dm12, dm23;
    and the sticks: d12 alone, the chain d12 + d23, dm12 alone, the chain dm12 + dm23."""
    world = World(tmp_path_factory.mktemp("world"))
    shutil.copytree(world.dir / "r2", world.dir / "r3", symlinks=True)
    write_release(world.dir / "r3", {"platform": ("13.2.2", 8), "game/lucky-sevens": ("2.0", 3),
                                     "game/fortune-wheel": ("1.0", 1)})
    (world.dir / "r3/platform/etc/cabinet.conf").write_text("payout_table = standard\naudit = strict\nlog = full\n")
    world.make("d23", "r3", base="r2")
    for number, source in enumerate(("r1", "r2", "r3"), 1):
        _with_locales(world, source, f"m{number}", number)
    world.make("full-m1", "m1")
    world.make("dm12", "m2", base="m1")
    world.make("dm23", "m3", base="m2")
    for number in (1, 2, 3):  # the whole-system layout's platform ships the games folder
        shutil.copytree(world.dir / f"r{number}", world.dir / f"w{number}", symlinks=True)
        (world.dir / f"w{number}/platform" / WHOLE_SYSTEM["games"]).mkdir(parents=True)
    world.make("full-w1", "w1")
    world.make("dw12", "w2", base="w1")
    world.make("dw23", "w3", base="w2")
    sticks = {"d12": ["d12"], "chain": ["d12", "d23"], "m12": ["dm12"], "m-chain": ["dm12", "dm23"],
              "w-chain": ["dw12", "dw23"]}
    for stick, bundles in sticks.items():
        world.stick(world.dir / f"stick-{stick}", *bundles)
    return world


@pytest.fixture(scope="module")
def releases(world) -> dict[str, Release]:
    b = world.bundles
    r1, r2 = Release.of("r1", b / "full-1"), Release.of("r2", b / "full-2")
    m1 = Release.of("m1", b / "full-m1")
    m2 = Release.of("m2", b / "dm12", base=m1)
    w1 = Release.of("w1", b / "full-w1")
    w2 = Release.of("w2", b / "dw12", base=w1)
    return {r.name: r for r in (r1, r2, Release.of("r3", b / "d23", base=r2), m1, m2,
                                Release.of("m3", b / "dm23", base=m2), w1, w2, Release.of("w3", b / "dw23", base=w2))}


def _scenarios(world: World) -> dict[str, Scenario]:
    def provisioned(bundle: str):
        def prepare(device: Cabinet) -> None:
            device.agent("provision", world.bundles / bundle, check=True)
            device.agent("boot", check=True)
            for path in device.config.layout.preserve:  # a machine-local file, kept across updates
                (device.dir / "envs/env-1" / path).mkdir(parents=True)
                (device.dir / "envs/env-1" / path / "host_key").write_text("machine secret\n")
        return prepare

    def trial_armed(device: Cabinet) -> None:
        provisioned("full-1")(device)
        device.agent("install", world.dir / "stick-d12", check=True)

    def trial_booted(device: Cabinet) -> None:
        trial_armed(device)
        device.agent("boot", check=True)

    def then(prepare, *command):
        return lambda device: (prepare(device), list(command))[1]

    def again(*command):
        return lambda device: [list(command)]

    def install(name: str, bundle: str, stick: str, after: str, end: str, layout: dict | None = None) -> Scenario:
        medium = world.dir / f"stick-{stick}"
        return Scenario(name, then(provisioned(bundle), "install", medium), (after, end), end,
                        again("install", medium), keep=("env-1",), layout=layout)

    def provision(name: str, bundle: str, end: str) -> Scenario:
        def unless_done(device: Cabinet) -> list[list]:
            return [] if device.committed().get("environment") else [["provision", world.bundles / bundle]]
        return Scenario(name, lambda device: ["provision", world.bundles / bundle], (None, end), end, unless_done)

    def committed_r2(device: Cabinet) -> list:
        trial_booted(device)
        device.agent("boot-check", check=True)
        return ["rollback"]

    def rollback_unless_done(device: Cabinet) -> list[list]:
        return [] if device.committed().get("environment") == "env-1" else [["rollback"]]

    stick = world.dir / "stick-d12"
    return {s.name: s for s in [
        # The delta d12 from a stick: the journal, the clone, each staged file, the trial's journal
        # entry, the boot record's one-time choice.
        install("install", "full-1", "d12", "r1", "r2"),
        # A chain d12 then d23: the intermediate tree is built in the state directory.
        install("install-chain", "full-1", "chain", "r1", "r3"),
        # The same in the whole-system layout: the platform is the environment's root.
        install("install-chain-whole-system", "full-w1", "w-chain", "w1", "w3", layout=WHOLE_SYSTEM),
        # The boot loader consuming the trial's one-time choice.
        Scenario("boot", then(trial_armed, "boot"), ("r1", "r2"), "r2", again("install", stick), keep=("env-1",)),
        # boot-check in the trial, healthy: the boot record first, then the committed state.
        Scenario("boot-check-commit", then(trial_booted, "boot-check"), ("r1", "r2"), "r2", again("install", stick),
                 keep=("env-1",)),
        # boot-check in the trial, failing hook: never committed; the retried install is rolled back again.
        Scenario("boot-check-rollback", then(trial_booted, "boot-check"), ("r1",), "r1", again("install", stick),
                 keep=("env-1",), healthy=False),
        # A technician's rollback from the committed r2 to r1; retried until it took effect.
        Scenario("rollback", committed_r2, ("r1", "r2"), "r1", rollback_unless_done, keep=("env-1", "env-2")),
        # Factory provisioning of a blank machine.
        provision("provision", "full-1", "r1"),
        # The same with hundreds of files to stage.
        install("install-many", "full-m1", "m12", "m1", "m2"),
        install("install-chain-many", "full-m1", "m-chain", "m1", "m3"),
        provision("provision-many", "full-m1", "m1"),
    ]}


SCENARIOS = ["install", "install-chain", "install-chain-whole-system", "boot", "boot-check-commit", "boot-check-rollback", "rollback", "provision",
             "install-many", "install-chain-many", "provision-many"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_power_cut_at_every_crash_point(world, releases, tmp_path, name):
    many = name.endswith("-many")
    result = sweep(_scenarios(world)[name], releases, world, tmp_path,
                   every=SAMPLE_EVERY_MANY if many else SAMPLE_EVERY, records=not many)
    print(result.report())
    assert result.points, "the command passed no crash point"
    if FULL_SWEEP:
        assert len(result.checked) == len(result.points)
    assert not result.problems, f"{len(result.problems)} problem(s):\n" + "\n".join(map(str, result.problems))
