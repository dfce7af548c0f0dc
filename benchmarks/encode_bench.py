"""Time the feature pipeline: all ML-100K texts (MiniLM) and posters (EfficientNet-Lite0), cold and cached.

    python -m benchmarks.encode_bench [--data-dir DIR] [--out benchmarks/results/encode-ml-100k.json]

Cold runs use a fresh temporary cache; the second request of each is a cache hit.
Targets on 2 CPU cores: texts < 15 s, posters < 5 min, each cache hit < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import atomic_write_json, provenance
from fusionlayer.encoders import encode_items

HERE = Path(__file__).resolve().parent

TARGETS_S = {"text": 15.0, "image": 300.0, "hit": 1.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", default=os.environ.get("FUSIONLAYER_DATA"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "encode-ml-100k.json")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for modality in ("text", "image"):
            for attempt in ("cold", "cached"):
                start = time.perf_counter()
                result = encode_items(args.dataset, modality, data_root=args.data_dir, cache_dir=cache, progress=False)
                seconds = time.perf_counter() - start
                target = TARGETS_S["hit" if attempt == "cached" else modality]
                rows.append({"modality": modality, "encoder": result.meta["encoder"], "run": attempt, "items": len(result.tokens),
                             "dim": result.dim, "encoded": result.stats["encoded"], "missing": result.stats["missing"],
                             "seconds": round(seconds, 2), "target_s": target, "met": seconds < target})
                print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(args.out, {**provenance("benchmarks.encode_bench", argv), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
