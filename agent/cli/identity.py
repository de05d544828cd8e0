"""``bundle-agent identity [--create] [--pub] [--json]``: the device key's public half and the
machine's serial, for the vendor's registry of devices (docs/STICK.md, "Device identity").

The secret key is never printed. A machine provisioned before device reports existed has no key:
``--create`` makes it (once, audit-logged); without it the command says so.
"""

from __future__ import annotations

import click

from agent.cli.context import DeviceContext, pass_device
from agent.cli.output import json_option, print_json
from agent.identity import NoIdentity, ensure_identity, load_identity
from keys.printable import echo


@click.command("identity")
@click.option("--create", is_flag=True,
              help="Create the device key if this machine has none yet (provisioned before device reports).")
@click.option("--pub", "pub_only", is_flag=True,
              help="Print only the public key file, to save as SERIAL.pub in the vendor's registry.")
@json_option
@pass_device
def identity_command(context: DeviceContext, create: bool, pub_only: bool, as_json: bool) -> None:
    """Print this machine's serial and device public key, for the vendor's registry (SERIAL.pub).

    The device key signs this machine's reports only; it can never sign bundles or trust roots.
    """
    created = False
    if create:
        device = context.device  # the lock: two agents never make two keys
        try:
            load_identity(device.state_dir)
        except NoIdentity:
            created = True
        # Always: it also rewrites a public file a power cut left missing or torn after the secret.
        public_key = ensure_identity(device.state_dir, device.audit)
    else:
        device = context.device_to_read
        public_key = load_identity(device.state_dir)
    facts = device.facts
    registry_name = f"{facts.serial}.pub"
    if as_json:
        print_json({"serial": facts.serial, "product": facts.product, "hardware": facts.hardware,
                    "key_id": public_key.id, "public_key": public_key.to_base64(),
                    "public_key_file": public_key.to_bytes().decode("ascii"), "registry_name": registry_name,
                    "created": created})
        return
    if pub_only:
        click.echo(public_key.to_bytes().decode("ascii"), nl=False)
        return
    if created:
        echo(f"created the device key {public_key.id}")
    echo(f"product {facts.product}, hardware {facts.hardware}, serial {facts.serial}")
    echo(f"device key {public_key.id} (signs this machine's reports only)")
    echo(f"save the next two lines as {registry_name} in the vendor's device registry")
    echo("(or run: bundle-agent identity --pub > " + registry_name + "):")
    click.echo(public_key.to_bytes().decode("ascii"), nl=False)
