# The two commands the README opens with. Both create .venv from pyproject.toml when needed.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench fuzz crash-test clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m bundler.demo

test: $(STAMP)
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
