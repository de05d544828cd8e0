# The two commands the README opens with. Both create .venv from pyproject.toml when needed.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-tools bench fuzz crash-test clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test,bundler]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m bundler.demo

# The Debian tools the interop and real-filesystem tests use, as COMMAND:PACKAGE. `make test`
# installs the missing ones first (as root), waiting for a dpkg lock another apt holds instead of
# failing; under CI a test skipped for a missing tool fails the run (tests/conftest.py).
TEST_TOOLS := minisign:minisign ostree:ostree mkfs.vfat:dosfstools fsck.vfat:dosfstools fusefat:fusefat \
	fusermount:fuse mkfs.ext4:e2fsprogs mkfs.btrfs:btrfs-progs mkfs.xfs:xfsprogs losetup:mount \
	script:bsdutils setpriv:util-linux runuser:util-linux mkfs.exfat:exfatprogs systemd-analyze:systemd \
	grub-editenv:grub-common grub-mkstandalone:grub-common /usr/lib/grub/x86_64-efi/btrfs.mod:grub-efi-amd64-bin \
	qemu-system-x86_64:qemu-system-x86 /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf mcopy:mtools sfdisk:fdisk
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600

# $(call install_tools,TARGET,COMMAND:PACKAGE ...): installs, as root, the Debian packages whose
# command (or file, for a package that installs no command) is missing, waiting for a dpkg lock
# another apt holds instead of failing.
define install_tools
	@missing=""; for pair in $(2); do \
		what="$${pair%%:*}"; \
		[ -e "$$what" ] || PATH="$$PATH:/usr/sbin:/sbin" command -v "$$what" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "make $(1): not installed: $$missing(needs root and apt-get)"; \
		exit 0; \
	fi; \
	echo "make $(1): installing $$missing"; \
	$(APT_GET) install $$missing >/dev/null || { $(APT_GET) update >/dev/null; $(APT_GET) install $$missing >/dev/null; } \
		|| echo "make $(1): apt-get could not install $$missing"
endef

test-tools:
	$(call install_tools,test,$(TEST_TOOLS))

test: $(STAMP) test-tools
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m pytest -q

# docs/BENCHMARKS.md: our delta bundle next to peer tools (../shared/bench/peers.py), all in one run, on the
# platform pair, the kernel pair and a 2 GiB synthetic game tree (bytes, make/apply wall time, peak RSS),
# plus peak RSS on one 4 GiB file and the platform install floor. Builds missing pairs under $CORPUS first.
# Ends with the "bench:" line. As root; about an hour on 2 cores (more the first time the pairs are built).
bench: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python tests/benchmarks/bench.py

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

# The reference cabinet's disk image (system/image/README.md): build/cabinet.img and build/image/.
# As root: debootstrap, chroot, loop devices. Installs the Debian tools it needs first.
IMAGE_TOOLS := debootstrap:debootstrap grub-mkstandalone:grub-efi-amd64-bin grub-editenv:grub-common \
	mcopy:mtools mkfs.vfat:dosfstools mkfs.btrfs:btrfs-progs sfdisk:fdisk losetup:mount
.PHONY: image
image: $(STAMP)
	$(call install_tools,image,$(IMAGE_TOOLS))
	$(VENV)/bin/python system/image/build.py

# The VM scenarios (tests/vm/, docs/DEVICE.md): build/cabinet.img booted in QEMU (TCG, OVMF) through a
# qcow2 overlay per scenario, sticks hot-plugged over QMP, power cuts; prints the "vm:" summary line.
# As root, after `make image`. VM_SELECT picks scenarios by pytest -k (VM_SELECT=smoke: insert,
# trial, commit only). Two pytest-xdist workers: the power cuts' two machines beside the other
# scenarios' one (tests/vm/conftest.py). A file path in VM_TOOLS is a package that installs no command.
VM_TOOLS := qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf \
	grub-mkstandalone:grub-common grub-editenv:grub-common /usr/lib/grub/x86_64-efi/btrfs.mod:grub-efi-amd64-bin \
	mcopy:mtools mkfs.vfat:dosfstools sfdisk:fdisk mkfs.exfat:exfatprogs mount.exfat-fuse:exfat-fuse \
	fusermount:fuse mkfs.btrfs:btrfs-progs losetup:mount
VM_SELECT ?=
.PHONY: vm-test
vm-test: $(STAMP)
	$(call install_tools,vm-test,$(VM_TOOLS))
	@test -f build/cabinet.img || { echo "make vm-test: build/cabinet.img is missing: run make image first"; exit 1; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH:/usr/sbin:/sbin" BUNDLE_VM_TESTS=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider \
		-n 2 tests/vm $(if $(VM_SELECT),-k "$(VM_SELECT)")

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
