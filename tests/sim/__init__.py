"""The tests' simulated world, imported by test modules (tests/conftest.py holds fixtures only).

* ``tools``: our command lines run as real processes (``run_cli``), Debian tools installed on demand;
* ``summary``: the counters behind the lines printed at the end of a run (``count_summary``);
* ``keyring``: named in-memory keys and trust roots;
* ``releases``: release trees, release.toml files, a trust setup made with the CLI;
* ``device``: the demo world (keys, releases, bundles, sticks made with the real tools) and the one
  simulated device, :class:`~tests.sim.device.Cabinet`, driven through ``bundle-agent --sysroot``;
* ``stick``: models of trust roots and bundles written as real, possibly hostile, sticks;
* ``power_cut``: the power-cut sweep over a cabinet's crash points;
* ``strategies``: Hypothesis strategies for the property tests of untrusted bytes;
* ``ab_slots``: a boot backend with two reusable slots (an A/B device), for the tests that register it.
"""
