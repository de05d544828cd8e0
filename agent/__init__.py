"""Device side: the ``bundle-agent`` command. Verifies; never signs (it imports no signing code)."""


def agent_version() -> str:
    """This agent's version, for reports. importlib.metadata is imported here, when a report is
    made, not with every command: it costs each start of the agent ~15 ms."""
    from importlib.metadata import version
    return version("offline-bundle")
