"""Run every benchmark, then record what they measured in ``benchmarks/measured.json``.

``flatland plan`` reads that file for its throughput figures, so estimates always come
from numbers this project measured, with the machine and the command beside them.
Run: ``.venv/bin/python benchmarks/collect.py [NAME ...]`` (``make bench``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "measured.json"


def last_json_line(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise ValueError("the benchmark printed no JSON line")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{os.cpu_count()}-core {cpu}, {platform.system()} {platform.release()}, no GPU used"


def main(names: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != "collect.py" and (not names or p.stem in names))
    measured = json.loads(OUT.read_text()) if OUT.exists() else {"figures": {}, "runs": {}}
    for script in scripts:
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            return proc.returncode
        result = last_json_line(proc.stdout)
        measured["figures"].update({f"{script.stem}.{k}": v for k, v in result.items()})
        measured["figures"].update({k: v for k, v in result.items() if k.endswith("_per_s")})
        measured["runs"][script.stem] = {
            "command": f".venv/bin/python benchmarks/{script.name}",
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
    measured["machine"] = machine()
    OUT.write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
