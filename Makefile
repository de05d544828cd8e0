# The two commands the README opens with. Both create .venv from pyproject.toml when needed.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-tools bench fuzz crash-test clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m bundler.demo

# The Debian tools the interop and real-filesystem tests use, as COMMAND:PACKAGE. `make test`
# installs the missing ones first (as root), waiting for a dpkg lock another apt holds instead of
# failing; under CI a test skipped for a missing tool fails the run (tests/conftest.py).
TEST_TOOLS := minisign:minisign mkfs.vfat:dosfstools fsck.vfat:dosfstools fusefat:fusefat \
	fusermount:fuse mkfs.ext4:e2fsprogs mkfs.btrfs:btrfs-progs mkfs.xfs:xfsprogs losetup:mount \
	script:bsdutils setpriv:util-linux runuser:util-linux
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600

test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "make test: not installed:$$missing(needs root and apt-get; their tests will skip, or fail under CI)"; \
		exit 0; \
	fi; \
	echo "make test: installing $$missing"; \
	$(APT_GET) install $$missing >/dev/null || { $(APT_GET) update >/dev/null; $(APT_GET) install $$missing >/dev/null; } \
		|| echo "make test: apt-get could not install$$missing"

test: $(STAMP) test-tools
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m pytest -q

# docs/BENCHMARKS.md: our delta bundle next to peer tools on the platform pair (root; ~10-20 min).
bench: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" tests/benchmarks/platform_pair.sh

# Coverage-guided fuzzing of the stick parsers (tests/fuzz/fuzz_formats.py); a crash is saved as ./crash-*.
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(VENV)/bin/python -c 'import atheris' 2>/dev/null || $(VENV)/bin/pip install --quiet atheris
	$(VENV)/bin/python tests/fuzz/fuzz_formats.py -max_total_time=$(FUZZ_SECONDS)

# tests/test_power_cuts.py and tests/test_block_power_cuts.py at every crash point, not a sample
# (make test); block-level cuts need root. Prints the "power cuts:" line (~20 min on 2 cores).
crash-test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" BUNDLE_FULL_CRASH_SWEEP=1 $(VENV)/bin/python -m pytest -q \
		tests/test_power_cuts.py tests/test_block_power_cuts.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
