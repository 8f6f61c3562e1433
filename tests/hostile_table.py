"""The hostile corpus by class, as a table: for each group of kinds, how many
kinds, forged passes (on a split test, and on a test judged apart), host
effects and processes left behind. Run as root, nothing else running:

    python tests/hostile_table.py            # the sandbox of this checkout
    PYTHONPATH=OTHER_TREE python tests/hostile_table.py   # another tree's sandbox,
                                                          # against this corpus

(`tests/test_hostile_corpus.py` asserts the same per kind; this prints it.)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile_corpus import KINDS, program_of
from test_hostile_corpus import HOST_FILES, PROJECT, _sysv

from streamcascade.config import SandboxConfig
from streamcascade.sandbox import Sandbox
from streamcascade.sandbox.runner import _processes_of_uid


def main() -> int:
    directory = Path(tempfile.mkdtemp(prefix="hostile-table-"))
    canary = directory / "canary.txt"
    canary.write_text("untouched")
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    forged: list[str] = []
    config = SandboxConfig(workers=2, per_test_timeout_s=2.0, program_timeout_s=2.0,
                           max_timeouts=1)  # fmt: skip
    with Sandbox(config) as box:
        for kind in KINDS:
            files, sysv = sorted(p.name for p in directory.iterdir()), _sysv()
            program = program_of(kind, str(canary), str(directory), PROJECT, 9)
            result = box.run(program, ["assert f() == 'escaped'",
                                       "assert str(f()) != 'SECRET_EXPECTED'", kind.apart])  # fmt: skip
            time.sleep(0.2)
            left = sum(len(_processes_of_uid(lease.uid)) for lease in box._uids.values())
            effects = (
                (canary.read_text() != "untouched")
                + (sorted(p.name for p in directory.iterdir()) != files)
                + (_sysv() != sysv)
                + sum(os.path.exists(p) for p in HOST_FILES)
            )
            row = rows[kind.group]
            row[0] += 1
            row[1] += result.test_status[0] == "passed"
            row[2] += result.test_status[2] == "passed"
            row[3] += effects
            row[4] += left
            if result.test_status[0] == "passed" or result.test_status[2] == "passed":
                forged.append(f"{kind.name}: {result.test_status[0]!r}, {result.test_status[2]!r}")
    print("| group | kinds | forged (split test) | forged (judged apart) | host effects | "
          "processes left |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    total = [0] * 5
    for group, row in rows.items():
        print(f"| {group} | " + " | ".join(map(str, row)) + " |")
        total = [a + b for a, b in zip(total, row, strict=True)]
    print("| all | " + " | ".join(map(str, total)) + " |")
    for line in forged:
        print("forged:", line)
    return 1 if total[1] or total[2] or total[3] or total[4] else 0


if __name__ == "__main__":
    sys.exit(main())
