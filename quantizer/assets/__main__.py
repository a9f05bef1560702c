"""`python -m babai_quantizer.assets [--force] [--only model|text]` (also `babai-assets`): build or rebuild
the embedded assets in the cache and print where they are."""
from __future__ import annotations

import argparse
import logging
import sys
import time

from . import ASSETS, AssetError, build, cache_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="babai-assets", description=__doc__)
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is intact")
    p.add_argument("--only", choices=sorted(ASSETS), help="only this asset (default: all)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    print(f"cache: {cache_dir()}")
    # text first: it is small, and the model needs nothing from it
    for key in [args.only] if args.only else ["text", "model"]:
        start = time.perf_counter()
        try:
            folder = build(key, force=args.force)
        except AssetError as e:
            print(f"babai-assets: {key}: {e}", file=sys.stderr)
            return 1
        print(f"{key}: {folder} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
