"""Technician recovery mode (docs/TECHNICIAN.md): what a person at the cabinet can look at and do.

Each module is one item of ``bundle-agent technician``'s menu, a function over the device that
returns a JSON-ready dict; the command line (agent/cli/technician.py) prints it for people or
as ``--json``, and the menu (agent/cli/menu.py) calls the same functions.
"""
