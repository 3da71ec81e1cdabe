"""Write the tiny COCO 2017 and Pascal VOC 2012 segmentation layouts that experiments/noise-segmentation-mini.yaml
transfers to (the same generated images and real annotation files the tests use), so a newcomer can run the
miniature study end to end:

    .venv/bin/python scripts/segmentation_demo_data.py            # writes ./data/coco-mini and ./data/voc-mini
    .venv/bin/flatland run experiments/noise-segmentation-mini.yaml

Real data sets go in the same layouts (see docs/segmentation.md); nothing here is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.train.segdata import write_coco, write_voc  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="data", help="folder to write coco-mini/ and voc-mini/ under")
    args = parser.parse_args()
    root = Path(args.root)
    for name in ("coco-mini", "voc-mini"):
        if (root / name).exists():
            print(f"{root / name} already exists: leaving it as it is", file=sys.stderr)
            return 2
    write_coco(root / "coco-mini", train=6, val=3, extras=False)
    write_voc(root / "voc-mini", train=6, val=3, size=(40, 32))
    print(f"wrote {root / 'coco-mini'} (COCO 2017 layout) and {root / 'voc-mini' / 'VOCdevkit'} (VOC 2012 layout)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
