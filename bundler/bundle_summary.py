"""What a bundle does, in numbers: per component, files added / changed / moved / removed."""

from __future__ import annotations

from typing import Any

from agent.format.manifest import Component, Manifest
from agent.format.tree import FILE
from keys.threshold import ThresholdResult


def evidence_of_base(component: Component) -> set[str]:
    """Base paths the manifest itself proves existed: copy sources, patch references, removed paths.
    A file rewritten whole (stored without a patch) leaves no trace of its base in the manifest."""
    found = set(component.removed)
    for entry in component.entries:
        if entry.base_path is not None:
            found.add(entry.base_path)
        found.update(c.prefix.path for c in entry.chunks if c.prefix is not None)
    return found


def component_summary(component: Component, object_sizes: dict[str, int],
                      base_paths: frozenset[str] | None = None) -> dict[str, Any]:
    """Counts per kind of change. ``base_paths``: every path of the tree this component replaces,
    when the caller knows it (``bundle make --base``, ``inspect --base``); otherwise what the
    manifest proves (:func:`evidence_of_base`), so a file rewritten whole at an existing path of a
    delta is "changed" only when a patch or the base listing shows that its path existed."""
    known = base_paths is not None
    existed = set(base_paths) if known else (evidence_of_base(component) if component.is_delta else set())
    counts = {kind: {"files": 0, "bytes": 0, "stored_bytes": 0}
              for kind in ("unchanged", "moved", "changed", "added")}
    largest = []
    for entry in component.entries:
        if entry.type != FILE or entry.size == 0:
            continue
        stored = sum(object_sizes[c.object] for c in entry.chunks)
        if entry.base_path == entry.path:
            kind = "unchanged"
        elif entry.path in existed:
            kind = "changed"  # new content at a path the base has, however it is stored
        elif entry.base_path is not None:
            kind = "moved"
        elif component.is_delta and any(c.prefix is not None for c in entry.chunks):
            kind = "changed"  # patched against a similar file under another name (renamed and edited)
        else:
            kind = "added"
        counts[kind]["files"] += 1
        counts[kind]["bytes"] += entry.size
        counts[kind]["stored_bytes"] += stored
        if stored:
            largest.append({"path": entry.path, "kind": kind, "size": entry.size, "stored_bytes": stored})
    largest.sort(key=lambda item: (-item["stored_bytes"], item["path"]))
    return {
        "name": component.name,
        "update": "delta" if component.is_delta else "full",
        "from": ({"version": component.base.version, "sequence": component.base.sequence}
                 if component.base else None),
        "to": {"version": component.version, "sequence": component.sequence},
        "policy": component.policy,
        "entries": len(component.entries),
        "files": counts,
        "removed": len(component.removed),
        "stored_bytes": sum(c["stored_bytes"] for c in counts.values()),
        "largest_changes": largest[:10],
        "targets": list(component.targets),
        "downgrade_from": list(component.downgrade_from),
        # False: "added" may include files rewritten whole at a path the base has (not in the manifest)
        "base_listed": known or not component.is_delta,
    }


def summary(manifest: Manifest, signers: ThresholdResult | None, signature_ids: list[str], *,
            bundle_id: str | None = None, base_paths: dict[str, frozenset[str]] | None = None) -> dict[str, Any]:
    """What the bundle does. ``bundle_id``: the folder name it has on a stick, which the agent
    prints; ``base_paths``: per component, the paths of the tree it replaces, when known."""
    object_sizes = manifest.stored_costs()
    base_paths = base_paths or {}
    result: dict[str, Any] = {
        "bundle_id": bundle_id,
        "product": manifest.product,
        "hardware": list(manifest.hardware),
        "format": manifest.format,
        "codecs": list(manifest.codecs),
        "payload_bytes": manifest.payload_size,
        "volumes": [{"name": v.name, "size": v.size} for v in manifest.volumes],
        "components": [component_summary(c, object_sizes, base_paths.get(c.name)) for c in manifest.components],
    }
    if signers is not None:
        result["signatures"] = {"verified_against_root": True, **signers.to_json()}
    else:
        result["signatures"] = {"verified_against_root": False, "key_ids": signature_ids}
    return result


def size_text(count: int, *, exact: bool = False) -> str:
    """``1.5 MiB`` for people; with ``exact``, the byte count first: ``1572864 bytes (1.5 MiB)``."""
    if exact:
        return f"{count} bytes ({size_text(count)})"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def render(report: dict[str, Any]) -> list[str]:
    lines = [f"bundle {report['bundle_id']}"] if report.get("bundle_id") else []
    lines += [f"product {report['product']}, hardware {', '.join(report['hardware'])}",
             f"payload {size_text(report['payload_bytes'])} in {len(report['volumes'])} volume(s)",
             f"format {report['format']}, needs codecs {', '.join(report['codecs'])}"]
    for c in report["components"]:
        start = f"{c['from']['version']} (sequence {c['from']['sequence']})" if c["from"] else "nothing"
        lines.append(f"{c['name']}: {c['update']} {start} -> {c['to']['version']} (sequence "
                     f"{c['to']['sequence']}), {size_text(c['stored_bytes'])} stored")
        for kind, numbers in c["files"].items():
            if numbers["files"]:
                lines.append(f"    {kind:9} {numbers['files']:6} files  {size_text(numbers['bytes']):>10}"
                             f"  stored {size_text(numbers['stored_bytes'])}")
        if not c["base_listed"] and c["files"]["added"]["files"]:
            lines.append("    (added may include files rewritten whole at an existing path: "
                         "give --base to tell them apart)")
        if c["removed"]:
            lines.append(f"    removed   {c['removed']:6} paths")
        for item in c["largest_changes"][:5]:
            lines.append(f"    largest: {item['path']} ({item['kind']}, {size_text(item['size'])} -> "
                         f"{size_text(item['stored_bytes'])})")
        if c["targets"]:
            lines.append(f"    only for serials not yet having it: {', '.join(c['targets'])}")
        if c["downgrade_from"]:
            lines.append(f"    may downgrade from sequence(s) {', '.join(map(str, c['downgrade_from']))}")
    signatures = report["signatures"]
    if signatures["verified_against_root"]:
        names = ", ".join(k["name"] for k in signatures["signed"]) or "none"
        lines.append(f"signers: {len(signatures['signed'])} of {signatures['threshold']} required ({names})"
                     + ("" if signatures["met"] else " - below threshold"))
    else:
        lines.append(f"signatures by key ids: {', '.join(signatures['key_ids']) or 'none'} "
                     "(pass --root to check them against a trust root)")
    return lines
