"""The hottest functions in py-spy's collapsed stacks (`bench/run.py --profile DIR`).

    .venv/bin/python bench/profile_summary.py DIR/afsfuse-0-create.txt [--top N]

Own samples say where the CPU goes; inclusive samples say which caller to look at.  The
profiles sample only the thread holding the GIL, so every sample is Python at work.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path


def frames(stack: str) -> list[str]:
    """Frames outermost first, each `function (file:line)` shortened to `function (file)`."""
    out = []
    for frame in stack.split(";"):
        out.append(re.sub(r":\d+\)$", ")", frame.strip()))
    return out


def summarise(path: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        chain = frames(stack)
        total += n
        own[chain[-1]] += n
        for frame in dict.fromkeys(chain):  # once per sample, outermost first on ties
            inclusive[frame] += n
    lines = [f"{path.name}: {total} samples"]
    for title, counter in (("own", own), ("inclusive", inclusive)):
        lines.append(f"  top {top} by {title} samples:")
        for frame, n in counter.most_common(top):
            lines.append(f"    {100 * n / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for path in args.files:
        print(summarise(path, args.top))


if __name__ == "__main__":
    main()
