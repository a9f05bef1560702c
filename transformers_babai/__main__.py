"""`python -m transformers_babai install-hook | remove-hook | status`: the optional startup hook.

install-hook writes one line into this interpreter's site-packages (`transformers_babai.pth`) that
imports transformers_babai at startup (standard library only; transformers is not imported until a
program imports it), so programs that never import the integration themselves — `lm_eval --model
hf`, other CLIs built on transformers — load babai checkpoints. remove-hook deletes it.
"""
from __future__ import annotations

import argparse
import sys

from ._autoload import PTH_LINE, pth_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m transformers_babai", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["install-hook", "remove-hook", "status"])
    args = p.parse_args(argv)
    path = pth_path()
    if args.action == "install-hook":
        path.write_text(PTH_LINE)
        print(f"wrote {path}")
    elif args.action == "remove-hook":
        path.unlink(missing_ok=True)
        print(f"removed {path}")
    else:
        print(f"{path}: {'installed' if path.is_file() and path.read_text() == PTH_LINE else 'not installed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
