"""Vendor side: the ``bundle`` command (keys, trust roots; bundles from release trees)."""
