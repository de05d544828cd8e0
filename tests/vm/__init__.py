"""The virtual-machine tests: the reference cabinet's GRUB, kernel, systemd, udev and USB sticks, for real.

* ``machine``: the harness - one QEMU machine (q35, OVMF, TCG) with its serial console, QMP,
  USB sticks and power switch; why ``qcow2`` + ``cache=writeback`` loses unflushed writes;
* ``qmp``: the small QMP client it talks to QEMU with;
* ``esp``: the cabinet's ESP (standalone GRUB, grub.cfg, environment blocks) on a FAT32 image;
* ``pool``: a small btrfs pool of fake environments, for the GRUB script alone;
* ``sticks``: FAT32 and exFAT stick images of ``bundle write`` folders, and hostile ones;
* ``cabinet``: the reference image (``make image``), later releases and the scenario driver;
* ``guest_check``: what runs inside the cabinet after a power cut to report what it booted;
* ``debian``: the Debian packages these tests install on first use.

``test_grub_script`` and ``test_disk_cache`` run in ``make test`` (seconds each, no kernel);
``test_cabinet`` boots the whole image and runs in ``make vm-test`` only (tests/vm/conftest.py).
"""
