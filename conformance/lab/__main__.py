"""``python -m hal_conformance.lab resources|probe``: what this node advertises to Ray.

    ray start --address HEAD:6379 --resources "$(python -m hal_conformance.lab resources)"
"""

from __future__ import annotations

import argparse
import json
import sys

from .probe import probe_host, resources


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hal_conformance.lab",
                                description="Probe this node's hal devices for a Ray lab.")
    p.add_argument("what", choices=("resources", "probe"),
                   help="resources: JSON for `ray start --resources`; probe: everything found")
    a = p.parse_args(argv)
    info = probe_host()
    out = resources(info) if a.what == "resources" else info
    sys.stdout.write(json.dumps(out, default=str, sort_keys=a.what == "resources") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
