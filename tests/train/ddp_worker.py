"""One torchrun rank of the DDP test: train, then record the keys seen and the final weights.

Usage: torchrun --nproc_per_node 2 ddp_worker.py STORE_DIR SPEC_JSON OUT_DIR
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from services.common.spec.experiment import parse_spec  # noqa: E402
from services.common.store import LocalStore  # noqa: E402
from services.train.loop import PretrainRun  # noqa: E402


def main() -> None:
    store_dir, spec_json, out_dir = sys.argv[1:4]
    spec = parse_spec(json.loads(spec_json))
    run = PretrainRun(spec, spec.pretrain[0].name, LocalStore(store_dir))
    seen: dict[int, list[str]] = {}
    run.execute(on_batch=lambda epoch, keys: seen.setdefault(epoch, []).extend(keys))
    rank = run.ctx.rank
    out = Path(out_dir)
    (out / f"keys-{rank}.json").write_text(json.dumps({"world_size": run.ctx.world_size, "keys": seen}))
    torch.save(run.model.state_dict(), out / f"weights-{rank}.pt")


if __name__ == "__main__":
    main()
