#!/usr/bin/python3
# nbdkit-fleece benchmarks
# SPDX-License-Identifier: BSD-3-Clause
#
# summarize.py RESULTS_DIR: print the markdown table of a bench run
# from RESULTS_DIR/metrics.jsonl (one {"run","contender","metric",
# "value"} object per line), machine.txt and notes.txt.
#
# Every number is the median over the runs.  Every ratio is computed
# within each run (both sides measured in the same run) and the median
# of those per-run ratios is shown.

import json
import os
import statistics
import sys

results = sys.argv[1]
data = {}          # (contender, metric) -> {run: value}
with open(os.path.join(results, "metrics.jsonl")) as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        o = json.loads(line)
        data.setdefault((o["contender"], o["metric"]), {})[o["run"]] = \
            float(o["value"])

CONTENDERS = [
    ("direct", "direct"),
    ("nbdplugin", "nbdkit nbd plugin"),
    ("ours-nosnap", "ours, no snapshot"),
    ("ours-snap", "ours, snapshot"),
    ("ours-ram", "ours + cbw-ram"),
    ("ours-bd", "ours + bitmap-discard"),
    ("ours-fast", "ours, fast store (memory)"),
    ("ours-fastram", "ours + cbw-ram, fast store"),
    ("ours-slow", "ours, slow store (+10 ms/write)"),
    ("ours-slowram", "ours + cbw-ram, slow store"),
    ("qemu-nosnap", "QEMU, no CBW"),
    ("qemu-snap", "QEMU CBW + snapshot-access"),
]
present = [c for c in CONTENDERS
           if any(k[0] == c[0] for k in data)]


def med(c, m):
    v = data.get((c, m))
    if not v:
        return None
    return statistics.median(v.values())


def ratios(a, b):
    """Per-run ratios a/b; a and b are (contender, metric)."""
    va, vb = data.get(a), data.get(b)
    if not va or not vb:
        return []
    return [va[r] / vb[r] for r in sorted(va) if r in vb and vb[r] > 0]


def ratio(a, b):
    """Median of per-run ratios a/b."""
    rs = ratios(a, b)
    return statistics.median(rs) if rs else None


def fmt_rate(c, m):
    v = med(c, m)
    if v is None:
        return "—"
    ops = med(c, m + "_ops")
    if ops is not None:
        return "%.1f (%.1fk op/s)" % (v, ops / 1000)
    return "%.1f" % v


def fmt_mib(c, m, kib=False):
    v = med(c, m)
    if v is None:
        return "—"
    return "%.1f" % (v / 1024 if kib else v / 1048576)


def first(c, *ms):
    """The first of several metric names this contender has."""
    for m in ms:
        if (c, m) in data:
            return m
    return ms[0]


rows = [
    ("4K random writes, pass 1 (MiB/s)", lambda c: fmt_rate(c, first(c, "w4k_p1", "w4k"))),
    ("4K random writes, pass 2 (MiB/s)", lambda c: fmt_rate(c, "w4k_p2")),
    ("64K random writes, pass 1 (MiB/s)", lambda c: fmt_rate(c, first(c, "w64k_p1", "w64k"))),
    ("64K random writes, pass 2 (MiB/s)", lambda c: fmt_rate(c, "w64k_p2")),
    ("4K first writes, one writer at QD1 (MiB/s)", lambda c: fmt_rate(c, "w4k_qd1")),
    ("64K first writes, one writer at QD1 (MiB/s)", lambda c: fmt_rate(c, "w64k_qd1")),
    ("4K sequential reads (MiB/s)", lambda c: fmt_rate(c, "r4k")),
    ("nbdcopy, export / fresh snapshot (MiB/s)", lambda c: fmt_rate(c, first(c, "copy_snap_clean", "copy"))),
    ("nbdcopy, snapshot after writes (MiB/s)", lambda c: fmt_rate(c, "copy_snap")),
    ("backup read + TRIM, 1M (MiB/s)", lambda c: fmt_rate(c, "readtrim")),
    ("fleece image after writer (MiB)", lambda c: fmt_mib(c, "img_after_write")),
    ("fleece image after TRIMs (MiB)", lambda c: fmt_mib(c, "img_after_trim")),
    ("server VmHWM (MiB)", lambda c: fmt_mib(c, "rss_kib", kib=True)),
    ("fleece store qemu-nbd VmHWM (MiB)", lambda c: fmt_mib(c, "rss_store_kib", kib=True)),
]

out = []
try:
    with open(os.path.join(results, "machine.txt")) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            out.append("- %s: %s" % (k, v))
except OSError:
    pass
out.append("")
out.append("| workload | " + " | ".join(n for _, n in present) + " |")
out.append("|---|" + "---|" * len(present))
for title, fn in rows:
    cells = [fn(c) for c, _ in present]
    if all(x == "—" for x in cells):
        continue
    out.append("| %s | %s |" % (title, " | ".join(cells)))
out.append("")
out.append("Passes: for contenders without a snapshot there is one pass "
           "(shown as pass 1).  A pass writes one request per 64K cluster "
           "over the whole disk in a seeded random order, QD16, one "
           "connection; pass 1 under a fresh snapshot makes every request "
           "pay a CBW.  nbdcopy goes to null: with its default connections.")
out.append("")

# Goals.
goals = []


def goal(name, r, target, cmp=">=", spread=None):
    if r is None:
        goals.append((name, "—", "—", cmp + " %g" % target, "not measured"))
        return
    ok = r >= target if cmp == ">=" else r <= target
    sp = "—"
    if spread and len(spread) > 1:
        sp = "%.2f–%.2f" % (min(spread), max(spread))
    goals.append((name, "%.2f" % r, sp, cmp + " %g" % target,
                  "**met**" if ok else "**not met**"))


def rgoal(name, a, b, target):
    goal(name, ratio(a, b), target, spread=ratios(a, b))


rgoal("first write 4K: ours-snap p1 / qemu-snap p1",
      ("ours-snap", "w4k_p1"), ("qemu-snap", "w4k_p1"), 1.3)
rgoal("first write 64K: ours-snap p1 / qemu-snap p1",
      ("ours-snap", "w64k_p1"), ("qemu-snap", "w64k_p1"), 1.3)
rgoal("first write 64K with cbw-ram: ours-ram p1 / qemu-snap p1",
      ("ours-ram", "w64k_p1"), ("qemu-snap", "w64k_p1"), 2.0)
rgoal("cbw-ram / none, first write 64K, fast store (memory)",
      ("ours-fastram", "w64k_p1"), ("ours-fast", "w64k_p1"), 1.2)
rgoal("cbw-ram / none, first write 64K, qcow2 store",
      ("ours-ram", "w64k_p1"), ("ours-snap", "w64k_p1"), 1.2)
rgoal("no snapshot 4K write: ours-nosnap / nbd plugin",
      ("ours-nosnap", "w4k"), ("nbdplugin", "w4k"), 1.15)
rgoal("no snapshot 4K read: ours-nosnap / nbd plugin",
      ("ours-nosnap", "r4k"), ("nbdplugin", "r4k"), 1.15)
rgoal("no snapshot 4K write: ours-nosnap / direct",
      ("ours-nosnap", "w4k"), ("direct", "w4k"), 0.45)
rgoal("nbdcopy of fresh snapshot / of our export",
      ("ours-snap", "copy_snap_clean"), ("ours-nosnap", "copy"), 0.95)
rgoal("second pass 4K: ours-snap p2 / ours-nosnap",
      ("ours-snap", "w4k_p2"), ("ours-nosnap", "w4k"), 0.95)
rgoal("second pass 64K: ours-snap p2 / ours-nosnap",
      ("ours-snap", "w64k_p2"), ("ours-nosnap", "w64k"), 0.95)
rss = med("ours-1t", "rss_kib")
store = med("ours-1t", "rss_store_kib")
goal("RSS at 1 TiB, no ramcache: nbdkit (MiB)",
     rss / 1024 if rss is not None else None, 64, "<=")
goal("RSS at 1 TiB, no ramcache: nbdkit + qemu-nbd store (MiB)",
     (rss + (store or 0)) / 1024 if rss is not None else None, 64, "<=")

out.append("| goal (median of per-run ratios) | value | runs min–max | target | status |")
out.append("|---|---|---|---|---|")
for g in goals:
    out.append("| %s | %s | %s | %s | %s |" % g)
out.append("")

# For information: QEMU's own ratios, and the cost of the extra layers.
info = [
    ("ours no snapshot / direct, 64K", ratio(("ours-nosnap", "w64k"), ("direct", "w64k"))),
    ("ours no snapshot / nbd plugin, 64K", ratio(("ours-nosnap", "w64k"), ("nbdplugin", "w64k"))),
    ("nbd plugin / direct, 4K", ratio(("nbdplugin", "w4k"), ("direct", "w4k"))),
    ("QEMU no CBW / direct, 4K", ratio(("qemu-nosnap", "w4k"), ("direct", "w4k"))),
    ("QEMU no CBW / direct, 64K", ratio(("qemu-nosnap", "w64k"), ("direct", "w64k"))),
    ("QEMU first write / direct, 64K", ratio(("qemu-snap", "w64k_p1"), ("direct", "w64k"))),
    ("ours first write / direct, 64K", ratio(("ours-snap", "w64k_p1"), ("direct", "w64k"))),
    ("first write 4K at QD1: ours-snap / qemu-snap", ratio(("ours-snap", "w4k_qd1"), ("qemu-snap", "w4k_qd1"))),
    ("first write 64K at QD1: ours-snap / qemu-snap", ratio(("ours-snap", "w64k_qd1"), ("qemu-snap", "w64k_qd1"))),
    ("first write 64K at QD1: ours-ram / qemu-snap", ratio(("ours-ram", "w64k_qd1"), ("qemu-snap", "w64k_qd1"))),
    ("ours second pass / qemu second pass, 4K", ratio(("ours-snap", "w4k_p2"), ("qemu-snap", "w4k_p2"))),
    ("ours second pass / qemu second pass, 64K", ratio(("ours-snap", "w64k_p2"), ("qemu-snap", "w64k_p2"))),
    ("cbw-ram / none, first write 64K, qcow2 store", ratio(("ours-ram", "w64k_p1"), ("ours-snap", "w64k_p1"))),
    ("cbw-ram / none, first write 64K, slow store", ratio(("ours-slowram", "w64k_p1"), ("ours-slow", "w64k_p1"))),
    ("ours-bd first write / ours-snap first write, 64K", ratio(("ours-bd", "w64k_p1"), ("ours-snap", "w64k_p1"))),
    ("ours nbdcopy snapshot after writes / QEMU's", ratio(("ours-snap", "copy_snap"), ("qemu-snap", "copy_snap"))),
    ("ours read+TRIM / QEMU's", ratio(("ours-snap", "readtrim"), ("qemu-snap", "readtrim"))),
]
info = [(n, r) for n, r in info if r is not None]
if info:
    out.append("| other ratios (same run) | value |")
    out.append("|---|---|")
    for n, r in info:
        out.append("| %s | %.2f |" % (n, r))
    out.append("")

if rss is not None:
    w = med("ours-1t", "w64k_p1")
    out.append("RSS at 1 TiB: nbdkit VmHWM %.1f MiB, qemu-nbd store VmHWM %.1f MiB "
               "(memory 1T live disk, snapshot open, a few thousand "
               "random 64K and 4K first writes%s, 256 MiB snapshot read)."
               % (rss / 1024, (store or 0) / 1024,
                  ", 64K first writes at %.1f MiB/s" % w if w else ""))
    out.append("")


# CPU per request, per process: median over the runs of CPU
# microseconds (task-clock, or utime+stime) and context switches per
# request, by role.
ROLES = ["client", "hop", "live", "store"]
WORKLOADS = [("w4k", "4K write"), ("w4k_p1", "4K first write"),
             ("w4k_p2", "4K write, pass 2"), ("r4k", "4K read"),
             ("w64k", "64K write"), ("w64k_p1", "64K first write"),
             ("w64k_p2", "64K write, pass 2"),
             ("w4k_qd1", "4K first write, QD1"),
             ("w64k_qd1", "64K first write, QD1")]


def fmt_cpu(c, m, role):
    us = data.get((c, "%s_cpu_%s" % (m, role)))
    if not us:
        return None
    v = sorted(us.values())
    cell = "%.1f" % statistics.median(v)
    if len(v) > 1:
        cell += " [%.1f–%.1f]" % (v[0], v[-1])
    sw = med(c, "%s_csw_%s" % (m, role))
    if sw is not None:
        cell += " (%.1f sw)" % sw
    return cell


cpu_rows = []
for m, wname in WORKLOADS:
    for c, cname in present:
        cells = [fmt_cpu(c, m, r) for r in ROLES]
        if all(x is None for x in cells):
            continue
        cpu_rows.append("| %s | %s | %s |" % (
            wname, cname, " | ".join(x or "—" for x in cells)))
if cpu_rows:
    out.append("CPU µs per request, per process: median [min–max over "
               "runs] (context switches per request).  hop = the server "
               "under test (none for direct), live = the live disk "
               "server, store = the fleece store (cbw's qemu-nbd or the "
               "cbw-store server).")
    out.append("")
    out.append("| workload | contender | " + " | ".join(ROLES) + " |")
    out.append("|---|---|" + "---|" * len(ROLES))
    out.extend(cpu_rows)
    out.append("")

try:
    with open(os.path.join(results, "notes.txt")) as f:
        notes = [l.strip() for l in f if l.strip()]
except OSError:
    notes = []
if notes:
    out.append("Notes:")
    for n in notes:
        out.append("- " + n)
    out.append("")

print("\n".join(out))
