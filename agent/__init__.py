"""Device side: the ``bundle-agent`` command. Verifies; never signs (it imports no signing code)."""
