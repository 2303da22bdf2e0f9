"""Report of a `make mutation` run: the mutation score per module and every surviving mutant.

    python tools/mutation_report.py results/mutation

Reads mutmut's cached results (`mutmut results --all true`, run in the repository root) and
`<folder>/equivalent.txt`, the mutants judged equivalent (one per line: the mutant's name, then
`#` and why it cannot change behaviour), and writes `<folder>/README.md`: per module the mutants,
killed (a timeout counts as killed), equivalent, surviving (also "no tests": no selected test
runs the function) and not yet checked, and the score = killed / (mutants - equivalent - not
checked); then the diff of each survivor (`mutmut show`), `<folder>/planted.md` when present
(bugs planted by hand and the tests that caught them) and the equivalent list. An entry of
`equivalent.txt` that names no surviving mutant (it was killed, or its function changed and the
numbering with it) is reported as stale. Exit status 1 when a module scores under `--target`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
SURVIVED = {"survived", "no tests", "suspicious"}


def mutmut(*args: str) -> str:
    """stdout of `mutmut <args>` (the mutmut next to this Python)."""
    exe = Path(sys.executable).with_name("mutmut")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=True).stdout


def statuses() -> dict[str, str]:
    """mutant name -> status, from `mutmut results --all true`."""
    out = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            out[name] = status
    return out


def module_of(mutant: str) -> str:
    """`pkg.module.x_function__mutmut_3` (or `pkg.module.xǁClassǁmethod__mutmut_3`) -> module."""
    return mutant.rsplit(".", 1)[0]


def read_equivalent(path: Path) -> dict[str, str]:
    """name -> reason from lines `name  # reason` (blank lines and `#` lines ignored)."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, reason = line.partition("#")
            if name.strip():
                out[name.strip()] = reason.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--target", type=float, default=0.9, help="score each module must reach")
    args = parser.parse_args(argv)
    status = statuses()
    equivalent = read_equivalent(args.folder / "equivalent.txt")
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    survivors = []
    for name, state in sorted(status.items()):
        row = counts[module_of(name)]
        row["mutants"] += 1
        if state in KILLED:
            row["killed"] += 1
        elif state == "not checked":
            row["not checked"] += 1
        elif name in equivalent:
            row["equivalent"] += 1
        else:
            row["survived"] += 1
            survivors.append(name)
    stale = sorted(n for n in equivalent if status.get(n) not in SURVIVED)

    lines = ["# Mutation testing: results of `make mutation`", "",
             "Written by `tools/mutation_report.py` from mutmut's results (configuration:",
             "`[tool.mutmut]` in pyproject.toml). Score = killed / (mutants - equivalent - not",
             "checked).", "",
             "| module | mutants | killed | equivalent | survived | not checked | score |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    failing = []
    total: Counter[str] = Counter()
    for module, row in sorted(counts.items()):
        total.update(row)
        judged = row["mutants"] - row["equivalent"] - row["not checked"]
        score = row["killed"] / judged if judged else float("nan")
        if judged and score < args.target:
            failing.append(module)
        lines.append(f"| {module} | {row['mutants']} | {row['killed']} | {row['equivalent']} | "
                     f"{row['survived']} | {row['not checked']} | {score:.1%} |")
    judged = total["mutants"] - total["equivalent"] - total["not checked"]
    lines.append(f"| **all** | {total['mutants']} | {total['killed']} | {total['equivalent']} | "
                 f"{total['survived']} | {total['not checked']} | "
                 f"{total['killed'] / judged if judged else float('nan'):.1%} |")
    lines += ["", f"## Surviving mutants ({len(survivors)})", ""]
    for name in survivors:
        diff = mutmut("show", name).strip()
        lines += [f"### {name} ({status[name]})", "", "```diff", diff, "```", ""]
    planted = args.folder / "planted.md"  # hand-written: bugs planted on purpose, what failed
    if planted.exists():
        lines += [planted.read_text().rstrip(), ""]
    lines += [f"## Equivalent mutants ({len(equivalent)}), from equivalent.txt", ""]
    lines += [f"- `{name}`: {reason}" for name, reason in sorted(equivalent.items())]
    if stale:
        lines += ["", "Stale entries (no longer a surviving mutant): "
                  + ", ".join(f"`{n}`" for n in stale)]
    args.folder.mkdir(parents=True, exist_ok=True)
    (args.folder / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[5:5 + len(counts) + 3]))
    if stale:
        print(f"{len(stale)} stale entries in equivalent.txt", file=sys.stderr)
    if failing:
        print(f"under the {args.target:.0%} target: {', '.join(failing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
