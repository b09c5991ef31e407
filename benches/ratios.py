#!/usr/bin/env python3
"""Ratios of the listener benches: teleport / bare tokio, taken within one criterion run.

Usage: python3 benches/ratios.py [target_dir]

Reads <target_dir>/criterion/<group>/<function>/new/estimates.json (mean, in ns) as written by
`cargo bench -p teleport-benches --bench listener`. target_dir defaults to $CARGO_TARGET_DIR, or
the workspace's target/. Prints one line per group and whether it meets the issue's target:
round trips no slower than bare tokio (ratio <= 1.00), accept rate within 10 % (ratio <= 1.10).
A miss that the means' 95 % confidence intervals could still explain (teleport's lower bound over
bare's upper bound meets the target) is marked as such. Always exits 0: it reports, it does not
gate.
"""

import json
import os
import sys
from pathlib import Path

# (group, highest acceptable teleport/bare ratio of mean times)
GROUPS = [
    ("accept_plain", 1.10),
    ("accept_tls_full_handshake", 1.10),
    ("echo_round_trip_261b", 1.00),
    ("echo_round_trip_261b_tls", 1.00),
]


def mean_ns(target: Path, group: str, function: str):
    """The mean and its confidence interval (lower, upper), in ns, or None."""
    path = target / "criterion" / group / function / "new" / "estimates.json"
    try:
        with open(path) as f:
            mean = json.load(f)["mean"]
        ci = mean["confidence_interval"]
        return (float(mean["point_estimate"]), float(ci["lower_bound"]), float(ci["upper_bound"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main() -> int:
    if len(sys.argv) > 1:
        target = Path(sys.argv[1])
    elif os.environ.get("CARGO_TARGET_DIR"):
        target = Path(os.environ["CARGO_TARGET_DIR"])
    else:
        target = Path(__file__).resolve().parent.parent / "target"

    header = f"{'group':<28} {'teleport ns':>12} {'bare ns':>12} {'ratio':>7}  {'target':>7}  verdict"
    print(header)
    print("-" * len(header))
    for group, limit in GROUPS:
        teleport = mean_ns(target, group, "teleport")
        bare = mean_ns(target, group, "bare_tokio")
        if teleport is None or bare is None or bare[0] <= 0 or bare[2] <= 0:
            missing = "teleport" if teleport is None else "bare_tokio"
            print(f"{group:<28} {'-':>12} {'-':>12} {'-':>7}  {'<=' + format(limit, '.2f'):>7}  "
                  f"no data ({missing} missing under {target / 'criterion' / group})")
            continue
        ratio = teleport[0] / bare[0]
        if ratio <= limit:
            verdict = "meets"
        elif teleport[1] / bare[2] <= limit:
            # The best case the two confidence intervals allow still meets it: noise, not a result.
            verdict = "misses, within the 95% CIs"
        else:
            verdict = "MISSES"
        print(f"{group:<28} {teleport[0]:>12.0f} {bare[0]:>12.0f} {ratio:>7.3f}  "
              f"{'<=' + format(limit, '.2f'):>7}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
