#!/usr/bin/env bash
# Benchmark on the real platform pair (a Debian root filesystem before and after
# a real security update, built by ../shared/bench/platform.sh): our delta
# bundle's size, make time and peak memory, and its apply side, next to per-file
# `zstd --patch-from`, `xdelta3`, `bsdiff` and `ostree static-delta --inline`,
# all measured in the same run. Writes docs/BENCHMARKS.md.
#
#   tests/benchmarks/platform_pair.sh [--out FILE] [--work DIR] [--keep] [--limit S]
#   tests/benchmarks/platform_pair.sh --report-only DIR [--out FILE]
#
#   --out FILE         write the report here instead of docs/BENCHMARKS.md (dry runs)
#   --work DIR         scratch directory (default: a new one under $CORPUS/_work,
#                      on the same disk as the pair and the peers' scratch space);
#                      removed at the end unless --keep
#   --keep             keep the scratch directory (bundle, logs, results)
#   --limit S          time limit per peer step in seconds (peers.py --limit)
#   --report-only DIR  rewrite the report from the results kept in DIR by an
#                      earlier `--keep` run, without measuring anything
#
# Environment: CORPUS (default ~/.cache/bundle-corpus, like the bench scripts),
# BENCH (default ../shared/bench relative to the repository root), BUNDLE (the
# bundle command; default `bundle` on PATH, else .venv/bin/bundle).
# `make bench` runs this with the venv's bin first on PATH. Needs root:
# platform.sh (debootstrap, chroot) and the peers (apt-get, ostree) do.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH=${BENCH:-$REPO/../shared/bench}
CORPUS=${CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/bundle-corpus}
export CORPUS
OUT=$REPO/docs/BENCHMARKS.md
WORK=
KEEP=0
LIMIT=
REPORT_ONLY=

die() { echo "platform_pair.sh: error: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

while [ $# -gt 0 ]; do
    case $1 in
        --out) [ $# -ge 2 ] || die "--out needs a file"; OUT=$2; shift 2 ;;
        --work) [ $# -ge 2 ] || die "--work needs a directory"; WORK=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --limit) [ $# -ge 2 ] || die "--limit needs seconds"; LIMIT=$2; shift 2 ;;
        --report-only) [ $# -ge 2 ] || die "--report-only needs a directory"; REPORT_ONLY=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac

BUNDLE=${BUNDLE:-}
if [ -z "$BUNDLE" ]; then
    if command -v bundle >/dev/null 2>&1; then BUNDLE=$(command -v bundle)
    elif [ -x "$REPO/.venv/bin/bundle" ]; then BUNDLE=$REPO/.venv/bin/bundle
    else die "no 'bundle' command: run 'make bench' (it creates .venv) or put the venv's bin on PATH"
    fi
fi

# ---------------------------------------------------------------------------
# The report: merges our measurements with peers.py's JSON into Markdown.
# ---------------------------------------------------------------------------
report() {  # report SCRATCH OUT
    python3 - "$1" "$2" "$BUNDLE" "$CORPUS" <<'PY'
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import textwrap

scratch, out_path, bundle_cmd, corpus = sys.argv[1:5]
R = lambda *p: os.path.join(scratch, *p)  # noqa: E731
MiB = 1 << 20


def parse_time(path):
    """Wall seconds and peak RSS (MiB) from a `/usr/bin/time -v` report."""
    txt = open(path).read()
    wall = rss = None
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", txt)
    if m:
        wall = sum(float(v) * 60 ** i for i, v in enumerate(reversed(m.group(1).split(":"))))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt)
    if m:
        rss = int(m.group(1)) / 1024
    return wall, rss


def run(cmd):
    try:
        p = subprocess.run(cmd, shell=isinstance(cmd, str), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=30)
        lines = p.stdout.decode(errors="replace").strip().splitlines()
        return lines[0].strip() if lines else "?"
    except Exception as e:  # noqa: BLE001 - only for the report
        return f"? ({e})"


def files_bytes(root, pattern=None):
    total = 0
    for dp, _, fn in os.walk(root):
        for f in fn:
            p = os.path.join(dp, f)
            if os.path.isfile(p) and not os.path.islink(p) and (pattern is None or re.search(pattern, f)):
                total += os.path.getsize(p)
    return total


ours = json.load(open(R("ours.json")))
peers = json.load(open(R("peers", "peers-platform.json")))
inspect = json.load(open(R("inspect.json")))
bdir = R("platform.bundle")

total = files_bytes(bdir)
payload = files_bytes(os.path.join(bdir, "payload"), r"\.vol$")
manifest_z = os.path.getsize(os.path.join(bdir, "manifest.json.zst"))
sigs = files_bytes(bdir, r"\.minisig$")
other = total - payload - manifest_z - sigs
manifest_raw = ours["manifest_raw_bytes"]
make_wall, make_rss = parse_time(R("make.time"))
apply_wall, apply_rss = parse_time(R("verify.time"))
entries = ours["manifest_entries"]

# --- the table --------------------------------------------------------------------
NAMES = {"file-zstd": "per-file `zstd -19 --long=31 --patch-from`",
         "file-xdelta3": "per-file `xdelta3 -9 -S djw`",
         "file-bsdiff": "per-file `bsdiff`",
         "ostree": "`ostree static-delta generate --inline`"}
ORDER = ["file-zstd", "file-xdelta3", "file-bsdiff", "ostree"]


def f1(x):
    return "-" if x is None else f"{x:.1f}"


def f0(x):
    return "-" if x is None else f"{x:.0f}"


rows = [("**`bundle make` delta (this repository)**", total, make_wall, make_rss, apply_wall, apply_rss, None),
        ("&nbsp;&nbsp;of which payload (`payload/*.vol`)", payload, None, None, None, None, None)]
peer_rows = {r["method"]: r for r in peers["rows"]}
for m in ORDER:
    r = peer_rows.get(m)
    if r is None:
        rows.append((NAMES[m], None, None, None, None, None, "not measured"))
        continue
    rows.append((NAMES[m], r["bytes"], r["make_s"], r["make_rss_mb"], r["apply_s"], r["apply_rss_mb"], r["error"]))

table = ["| method | bytes | MiB | make wall s | make peak RSS MiB | apply wall s | apply peak RSS MiB |",
         "|---|---:|---:|---:|---:|---:|---:|"]
for name, nbytes, mw, mr, aw, ar, err in rows:
    b = "-" if nbytes is None else f"{nbytes:,}"
    mib = "-" if nbytes is None else f"{nbytes / MiB:.2f}"
    table.append(f"| {name}{' (FAILED: ' + err + ')' if err and nbytes is None else ''} | {b} | {mib} | "
                 f"{f1(mw)} | {f0(mr)} | {f1(aw)} | {f0(ar)} |")

peer_loads = [r["make_load1"] for r in peers["rows"] if r.get("make_load1") is not None]
our_loads = ours.get("make_load1") or []
load_note = ("1-minute load average around the make steps (2 cores: above ~2 means something else competed for "
             "the CPU): ours " + (f"{min(our_loads):.1f}-{max(our_loads):.1f}" if our_loads else "?") + ", peers "
             + (f"{min(peer_loads):.1f}-{max(peer_loads):.1f}" if peer_loads else "?")
             + ". Times are from one run and move between runs on a busy machine, apply steps of a few seconds "
             "most (relatively); sizes repeat exactly, except `ostree`'s by about a kilobyte (its commits carry "
             "timestamps).")
zstd_row = peer_rows.get("file-zstd")
if zstd_row and zstd_row.get("bytes"):
    zb = zstd_row["bytes"]
    verdict = ("no larger than" if total <= zb else "LARGER than")
    comparison = (f"The whole bundle ({total:,} bytes, {total / MiB:.2f} MiB) is {verdict} per-file "
                  f"`zstd -19 --long=31 --patch-from` ({zb:,} bytes, {zb / MiB:.2f} MiB): "
                  f"{(total - zb) / zb * 100:+.1f}%.")
else:
    comparison = "Per-file `zstd --patch-from` did not produce a result in this run; see the peers' details below."

# --- machine facts -------------------------------------------------------------------
cpu_model = "?"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
try:
    shebang = open(os.path.realpath(bundle_cmd), "rb").readline().decode(errors="replace")
    bundle_python = shlex.split(shebang[2:]) if shebang.startswith("#!") else ["python3"]
except OSError:
    bundle_python = ["python3"]
py_version = run(bundle_python + ["--version"])
zstd_binding = run(bundle_python + ["-c", "import zstandard as z; print(z.__version__, 'libzstd',"
                                    " '.'.join(map(str, z.ZSTD_VERSION)))"])
versions = peers.get("versions", {})


def short_version(text):
    m = re.search(r"v?(\d+(?:[.\-]\d+)+\S*)", text or "")
    return m.group(1).rstrip("',") if m else (text or "?")

# --- where the bytes go ----------------------------------------------------------------
comp = inspect["components"][0]
files = comp["files"]
kinds = []
for kind in ("changed", "added", "moved", "unchanged"):
    k = files.get(kind)
    if k:
        kinds.append(f"| {kind} | {k['files']:,} | {k['bytes'] / MiB:.1f} | {k['stored_bytes']:,} |")
largest = ["| path | kind | new size | stored bytes | stored / size |", "|---|---|---:|---:|---:|"]
for c in comp.get("largest_changes", []):
    largest.append(f"| `{c['path']}` | {c['kind']} | {c['size']:,} | {c['stored_bytes']:,} | "
                   f"{c['stored_bytes'] / c['size'] * 100 if c['size'] else 0:.1f}% |")
top = sum(c["stored_bytes"] for c in comp.get("largest_changes", []))
n_top = len(comp.get("largest_changes", []))
packed = [c for c in comp.get("largest_changes", []) if re.search(r"\.(gz|xz|bz2|zst|zip|jar)$", c["path"])]
manifest = json.loads(subprocess.run(["zstd", "-q", "-dc", os.path.join(bdir, "manifest.json.zst")],
                                     stdout=subprocess.PIPE, check=True).stdout)
by_path = {e["path"]: e for c in manifest["components"] for e in c["entries"]}
n_recipe = sum(1 for e in by_path.values() if "gzip" in e)
n_gz_stored = sum(1 for e in by_path.values() if e["path"].endswith(".gz") and e.get("chunks"))
packed_plain = [c for c in packed if "gzip" not in by_path.get(c["path"], {})]
rest = [c for c in comp.get("largest_changes", []) if c not in packed]


def is_elf(rel):
    try:
        with open(os.path.join(corpus, "platform", "new", rel), "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


n_elf = sum(1 for c in rest if is_elf(c["path"]))
compressed_note = [
    f"Of the {n_gz_stored} `.gz` files the bundle stores bytes for, {n_recipe} re-deflate bit for bit and are",
    "carried as a delta of their uncompressed content plus a recipe; the others are stored as compressed",
    "bytes (as a delta if changed)."]
if packed:
    compressed_note += [
        f"{len(packed)} of the {n_top} largest changes are compressed files "
        f"({sum(c['stored_bytes'] for c in packed):,} stored bytes): "
        f"{sum(1 for c in packed_plain if c['kind'] == 'changed')} changed files without a recipe (zlib does not",
        "reproduce them) and "
        f"{sum(1 for c in packed_plain if c['kind'] == 'added')} added files with no base to delta against. They cost "
        "almost their full size:",
        "a change early in a compressed stream changes most of the compressed bytes after it, and compressed",
        "bytes do not compress again."]
if rest:
    compressed_note += [(f"All {len(rest)} others are" if n_elf == len(rest) else f"{n_elf} of the other {len(rest)} are")
                        + " ELF executables or shared libraries rebuilt by the update."]
compressed_note = textwrap.wrap(" ".join(compressed_note), width=110)

tree = peers["tree"]
try:  # when the peers finished, i.e. the end of the measurement (not when the report was written)
    now = datetime.datetime.fromisoformat(peers["date"]).astimezone(datetime.timezone.utc)
except (KeyError, ValueError):
    now = datetime.datetime.now(datetime.timezone.utc)
lines = [
    "# Benchmarks",
    "",
    "Delta bundle for a real platform update, next to the tools people already use for the job, all measured",
    "in one run on one machine. Produced by `tests/benchmarks/platform_pair.sh` (`make bench`); do not edit the",
    "numbers by hand, rerun the script.",
    "",
    f"- Date: {now:%Y-%m-%d %H:%M} UTC",
    f"- Machine: {os.cpu_count()} cores, {cpu_model}, {mem_gib:.1f} GiB RAM, Linux {platform.release()}",
    f"- bundle {ours['bundle_version']}, {py_version}, zstandard {zstd_binding}",
    "- Peers (Debian packages): " + ", ".join(f"{t} {short_version(versions.get(t))}"
                                             for t in ("zstd", "xdelta3", "bsdiff", "ostree")),
    "",
    "## The pair",
    "",
    "`../shared/bench/platform.sh`: a Debian bookworm root filesystem (debootstrap minbase plus ~20 common",
    "packages) before and after a real security/point update from the Debian archive. Tree sizes are sums of",
    "regular files:",
    "",
    f"- old: {tree['old_files']:,} files, {tree['old_bytes'] / MiB:.1f} MiB; new: {tree['new_files']:,} files, "
    f"{tree['new_bytes'] / MiB:.1f} MiB",
    f"- {tree['files_changed']:,} files changed at the same path, {tree['files_added']} added, "
    f"{tree['files_removed']} removed (path comparison by the bench scripts;",
    "  `bundle inspect` below counts hard links and moved files separately)",
    "",
    "## Results",
    "",
    "Bytes are what has to be carried to the machine. For our bundle that is the whole bundle directory:",
    "compressed manifest, its signature and the payload volume(s). Wall times are seconds; peak RSS is the",
    "largest single process of the step (`/usr/bin/time -v`). `bundle make` runs with its default of 2",
    "threads, the per-file peers with 2 workers.",
    "",
    *table,
    "",
    textwrap.fill(comparison, width=110),
    "",
    *textwrap.wrap(load_note, width=110),
    "",
    "What each row measures:",
    "",
    "- **bundle make**: `bundle make --release new.toml --base old.toml --key ... --out ...` (zstd level 19,",
    "  default options). Apply: `bundle verify BUNDLE --root root.json --base platform=OLD --work-dir ...`,",
    "  which checks the signatures and every stored byte, builds the complete new tree from old plus the",
    "  payload in a scratch directory with the device's apply engine, and checks every entry of the new tree",
    "  (SHA-256 of every file, modes, owners, links) against the signed manifest.",
]
for m in ORDER:
    r = peer_rows.get(m)
    if r:
        lines.append(textwrap.fill(f"- **{m}**: {r['detail']}" + (f" **Error:** {r['error']}" if r.get("error") else ""),
                                   width=110, subsequent_indent="  ", break_on_hyphens=False))
lines += [
    "",
    "## Reading the numbers",
    "",
    "**What our bytes include that the peers' do not.** The per-file peers count only the delta files: no",
    "listing of paths, modes, owners, symlinks, hard links or removals, no checksums, no signature; the",
    "pipeline that would ship and apply them is left to the reader. Our bundle carries a signed, compressed",
    f"listing of the complete new tree ({entries:,} entries) with a SHA-256 for every file, the delta recipe for",
    "every changed file and the device's install policy:",
    "",
    "| part of the bundle | bytes |",
    "|---|---:|",
    f"| `manifest.json.zst` (full listing of the new tree + object index; {manifest_raw:,} bytes uncompressed) "
    f"| {manifest_z:,} |",
    f"| signature(s) (`*.minisig`) | {sigs:,} |",
    f"| payload volume(s) (`payload/*.vol`) | {payload:,} |",
] + ([f"| other files | {other:,} |"] if other else []) + [
    f"| **total** | **{total:,}** |",
    "",
    *textwrap.wrap(
        f"The manifest is {manifest_z / total * 100:.0f}% of the bundle. The payload alone, the number that is "
        "comparable to the per-file peers' sums, is "
        + (f"{payload / zstd_row['bytes'] * 100:.0f}% of per-file `zstd --patch-from`."
           if zstd_row and zstd_row.get("bytes") else "shown in the table."), width=110),
    "`ostree static-delta` is the closest peer in scope (it also carries the metadata of the new commit and is",
    "content-addressed by SHA-256), but it is not signed here and its apply step stores objects in a repository",
    "rather than building a checked tree.",
    "",
    "**Apply times are not like for like.** The per-file peers rebuild only the changed and added files and",
    "compare them with new/; `ostree` writes the new objects into a repository that already holds old. Our",
    "apply step builds the whole new tree and hashes every file of it, close to what installing into the",
    "empty slot of an A/B pair costs on a device. It copies every unchanged file (the apply engine reflinks",
    f"them instead on btrfs and xfs; the scratch space here is {ours.get('work_fs', '?')}), and hashes every "
    "base byte either way.",
    "",
    "**Where the bytes go** (`bundle inspect BUNDLE --json`, component `platform`; an object shared by several",
    "files counts for each of them, so stored bytes can add up to more than the payload):",
    "",
    "| kind | files | MiB in new | stored bytes |",
    "|---|---:|---:|---:|",
    *kinds,
    "",
    f"The {n_top} largest changes take {top:,} stored bytes "
    f"({top / comp['stored_bytes'] * 100 if comp.get('stored_bytes') else 0:.0f}% of the component's "
    f"{comp.get('stored_bytes', 0):,}):",
    "",
    *largest,
    "",
    *compressed_note,
    "",
    "## How to reproduce",
    "",
    "As root (building the pair needs debootstrap and chroot, the peers are installed from Debian packages):",
    "",
    "```sh",
    "make bench                                                 # = the script with .venv/bin first on PATH",
    "tests/benchmarks/platform_pair.sh --out draft.md --keep   # dry run: report to draft.md, keep the scratch dir",
    "```",
    "",
    "The pair is built once into `$CORPUS/platform/{old,new}` (`$CORPUS` defaults to `~/.cache/bundle-corpus`;",
    "about 10 minutes the first time). A run then takes a few minutes (about 5 on the machine above), most of",
    "it the peers. The scratch directory is a new one under `$CORPUS/_work` unless `--work DIR` is given.",
    "Numbers from different machines or runs are not comparable: compare rows of one run.",
    "",
]
with open(out_path, "w") as f:
    f.write("\n".join(lines))
print(f"wrote {out_path}", file=sys.stderr)
print("\n".join(table), file=sys.stderr)
print(comparison, file=sys.stderr)
PY
}

if [ -n "$REPORT_ONLY" ]; then
    [ -f "$REPORT_ONLY/ours.json" ] && [ -f "$REPORT_ONLY/peers/peers-platform.json" ] \
        || die "$REPORT_ONLY holds no results of an earlier run (ours.json, peers/peers-platform.json)"
    report "$REPORT_ONLY" "$OUT"
    exit 0
fi

# ---------------------------------------------------------------------------
# The measurement.
# ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root: ../shared/bench/platform.sh (debootstrap, chroot) and the peer tools need it"
[ -x /usr/bin/time ] || die "/usr/bin/time (GNU time, Debian package 'time') is required for -v"
[ -f "$BENCH/platform.sh" ] && [ -f "$BENCH/peers.py" ] \
    || die "no bench scripts in $BENCH (expected ../shared/bench beside the repository; set BENCH=...)"
# The peer tools, from the machine's Debian package sources when missing (peers.py does not install them).
need_tool() {  # need_tool COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing Debian package $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null \
        || die "could not install $2 (apt-get install $2); the peers need $1"
}
need_tool zstd zstd
need_tool xdelta3 xdelta3
need_tool bsdiff bsdiff
need_tool ostree ostree
mkdir -p "$(dirname "$OUT")"

log "platform pair: ensuring $CORPUS/platform exists (../shared/bench/platform.sh)"
bash "$BENCH/platform.sh"
OLD=$CORPUS/platform/old
NEW=$CORPUS/platform/new
[ -d "$OLD" ] && [ -d "$NEW" ] || die "platform.sh did not produce $OLD and $NEW"

if [ -z "$WORK" ]; then
    mkdir -p "$CORPUS/_work"
    WORK=$(mktemp -d "$CORPUS/_work/bundle-platform.XXXXXX")
else
    [ ! -e "$WORK" ] || [ -z "$(ls -A "$WORK")" ] || die "--work $WORK exists and is not empty"
    mkdir -p "$WORK"
fi
WORK=$(cd "$WORK" && pwd)
cleanup() {
    if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf --one-file-system "$WORK"; fi
}
trap cleanup EXIT

# run LOGNAME CMD...: run under /usr/bin/time -v, output to WORK/LOGNAME.log, timing to WORK/LOGNAME.time
run_timed() {
    local name=$1; shift
    if ! /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.log" 2>&1; then
        tail -n 30 "$WORK/$name.log" >&2
        KEEP=1
        die "$name failed: $* (log and scratch kept in $WORK)"
    fi
}

log "scratch: $WORK"
for seq in 1 2; do
    if [ "$seq" = 1 ]; then tree=$OLD; name=old; else tree=$NEW; name=new; fi
    cat >"$WORK/$name.toml" <<EOF
product = "bench"
hardware = ["x86-64"]

[components.platform]
path = "$tree"
version = "$seq"
sequence = $seq
EOF
done

log "throwaway keys and trust root"
"$BUNDLE" keys new release --dir "$WORK/keys" --no-passphrase >/dev/null
"$BUNDLE" keys new root --dir "$WORK/keys" --no-passphrase >/dev/null
"$BUNDLE" root new --out "$WORK/root.json" --root-key "$WORK/keys/root.pub" --signer "$WORK/keys/release.pub" >/dev/null
"$BUNDLE" root sign "$WORK/root.json" --key "$WORK/keys/root.key" >/dev/null

log "bundle make (delta old -> new)"
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
run_timed make "$BUNDLE" make --release "$WORK/new.toml" --base "$WORK/old.toml" \
    --key "$WORK/keys/release.key" --out "$WORK/platform.bundle"
LOAD_AFTER=$(cut -d' ' -f1 /proc/loadavg)
mkdir -p "$WORK/apply"
log "bundle verify --base (apply into scratch and check every file)"
run_timed verify "$BUNDLE" verify "$WORK/platform.bundle" --root "$WORK/root.json" \
    --base "platform=$OLD" --work-dir "$WORK/apply"
"$BUNDLE" inspect "$WORK/platform.bundle" --json >"$WORK/inspect.json"

RAW=$(zstd -q -dc "$WORK/platform.bundle/manifest.json.zst" | wc -c)
ENTRIES=$(python3 -c 'import json,sys; print(sum(c["entries"] for c in json.load(open(sys.argv[1]))["components"]))' \
    "$WORK/inspect.json")
VERSION=$("$BUNDLE" --version | sed 's/.*version //')
WORK_FS=$(findmnt -no FSTYPE -T "$WORK" 2>/dev/null || stat -f -c %T "$WORK")
cat >"$WORK/ours.json" <<EOF
{"bundle_version": "$VERSION", "manifest_raw_bytes": $RAW, "manifest_entries": $ENTRIES, "work_fs": "$WORK_FS",
 "make_load1": [$LOAD_BEFORE, $LOAD_AFTER]}
EOF
log "ours: $(find "$WORK/platform.bundle" -type f -printf '%s\n' | awk '{s += $1} END {print s}') bytes," \
    "make $(sed -n 's/.*Elapsed (wall clock).*: //p' "$WORK/make.time")"

log "peers (same run): per-file zstd, xdelta3, bsdiff; ostree static-delta - this takes a while"
PEERS_ARGS=(platform --corpus "$CORPUS" --work "$WORK/peers-work" --results "$WORK/peers"
            --only file-zstd,file-xdelta3,file-bsdiff,ostree)
[ -z "$LIMIT" ] || PEERS_ARGS+=(--limit "$LIMIT")
python3 "$BENCH/peers.py" "${PEERS_ARGS[@]}" >&2 || { KEEP=1; die "peers.py failed (scratch kept in $WORK)"; }

report "$WORK" "$OUT"
