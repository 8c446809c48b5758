"""A conformance lab over a Ray cluster: ``hal conformance --cluster ADDRESS``.

Each node probes its own devices with its own plugins and advertises them to Ray as
custom resources; cells run only where their device is, spread over every node that
has it, each backend still in its own worker process on that node. A lost node's
unfinished cells run elsewhere or are reported ``lost``; the merged report records
each host's versions and flags hosts with the same device that disagree.
See docs/lab.md. Ray is imported only when a lab runs (``pip install 'hal-accel[lab]'``).
"""

from __future__ import annotations

from typing import Any

from .scheduler import CROSS_CHECK, Lab

__all__ = ["CROSS_CHECK", "Lab", "cluster_devices", "devices_cli", "lab_tables"]


def cluster_devices(address: str) -> list[dict[str, Any]]:
    """Every node of the cluster at ``address``: host, versions, and each device with
    whether the node advertises it to Ray."""
    from . import cluster as cl
    from .probe import devices_of

    conn = cl.connect(address)
    try:
        out = []
        for n in cl.nodes():
            adv = n.devices
            row = {**n.to_dict(), "hal_version": (n.info or {}).get("hal_version"), "devices": []}
            if n.info:
                row["backends"] = {b: {k: v.get(k) for k in ("version", "missing_runtime", "error")}
                                   for b, v in n.info["backends"].items()}
                row["devices"] = [{**{k: d.get(k) for k in ("target", "kind", "available", "name",
                                                           "precisions", "reason", "backend_version")},
                                   "advertised": d["target"] in adv} for d in devices_of(n.info)]
            out.append(row)
        return out
    finally:
        conn.close()


def devices_cli(address: str, as_json: bool, console) -> None:
    """``hal devices --cluster ADDRESS``: every node's devices, grouped by host."""
    import json
    import sys

    from rich.table import Table

    hosts = cluster_devices(address)
    if as_json:
        sys.stdout.write(json.dumps({"cluster": address, "hosts": hosts}, indent=2, default=str) + "\n")
        return
    t = Table(title=f"hal devices on {address} ({len(hosts)} host(s))")
    for c in ("host", "target", "kind", "available", "in Ray", "name", "precisions", "note"):
        t.add_column(c)
    for h in hosts:
        t.add_section()
        label = f"{h['host']}\n[dim]{h['ip']} · hal {h.get('hal_version') or '?'} · {h['cpus']:g} CPU[/dim]"
        if h.get("error"):
            t.add_row(label, "-", "-", "[red]no[/]", "", "", "", h["error"])
            continue
        if not h["devices"]:
            t.add_row(label, "-", "-", "", "", "no backend", "", "")
        for i, d in enumerate(h["devices"]):
            t.add_row(label if i == 0 else "", d["target"], d["kind"],
                      "[green]yes[/]" if d["available"] else "[red]no[/]",
                      "yes" if d["advertised"] else ("[yellow]no[/]" if d["available"] else ""),
                      d["name"] or "", " ".join(d.get("precisions") or ()),
                      d["reason"] or ("" if d["advertised"] or not d["available"] else
                                      "not advertised: restart with --resources \"$(python -m "
                                      "hal_conformance.lab resources)\""))
    console.print(t)


def lab_tables(r) -> list:
    """Console tables for a lab run: hosts, then cross-host consistency and losses."""
    from rich.table import Table

    from .reports import consistency_rows, hosts_rows

    lab = r.meta.get("lab") or {}
    out = []
    ht = Table(title="hosts", title_justify="left")
    for c in ("host", "hal", "backends", "devices", "cells"):
        ht.add_column(c, overflow="fold")
    for h in hosts_rows(r):
        ht.add_row(h["host"], str(h["hal"] or "?"), h["backends"], h["devices"],
                   h["cells"] + (f" — {h['error']}" if h["error"] else ""))
    out.append(ht)
    rows = consistency_rows(r)
    if rows:
        ct = Table(title="cross-host consistency", title_justify="left")
        for c in ("cell", "hosts", "verdict", "detail"):
            ct.add_column(c, overflow="fold")
        for x in rows:
            style = {"agree": "green", "not compared": "dim"}.get(x["verdict"], "bold red")
            ct.add_row(x["what"], x["hosts"], f"[{style}]{x['verdict']}[/]", x["detail"])
        out.append(ct)
    if lab.get("losses"):
        lt = Table(title="node losses", title_justify="left")
        for c in ("after", "host", "device", "in flight", "reason"):
            lt.add_column(c, overflow="fold")
        for x in lab["losses"]:
            lt.add_row(f"{x['after_s']:.0f}s", x["host"], x["target"], x.get("in_flight") or "",
                       x["reason"])
        out.append(lt)
    return out
