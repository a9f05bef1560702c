"""The text asset: Jane Austen's novels from Debian's `r-cran-janeaustenr`, split for calibration/evaluation.

Files written: `calib.txt` (emma, mansfieldpark, northangerabbey, sensesensibility), `eval.txt`
(prideprejudice), each the novels' lines joined with "\n"; and `splits.json` naming the novels.
`persuasion` is not used.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from tqdm import tqdm

from .cache import AssetError
from .fetch import apt_download, extract_deb
from .rdata import read_lazyload_db

log = logging.getLogger("babai_quantizer.assets")

DEB_PACKAGE = "r-cran-janeaustenr"
DB_STEM = "usr/lib/R/site-library/janeaustenr/data/Rdata"
SPLITS = {
    "calib": ("emma", "mansfieldpark", "northangerabbey", "sensesensibility"),
    "eval": ("prideprejudice",),
}


def split_file(split: str) -> str:
    """File name of a split inside the text asset folder."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} not in {sorted(SPLITS)}")
    return f"{split}.txt"


def novel_lines(db: dict, name: str, source: str) -> list[str]:
    lines = db.get(name)
    if not isinstance(lines, list) or not lines or not all(isinstance(s, str) for s in lines):
        raise AssetError(f"{source}: object {name!r} is missing or not a character vector of lines")
    return lines


def build_text(out: Path) -> None:
    """Fetch the Debian package, parse its R data and write the split files into `out`."""
    with tempfile.TemporaryDirectory(prefix="babai-austen-") as tmp:
        tmp = Path(tmp)
        deb = apt_download(DEB_PACKAGE, tmp)
        root = extract_deb(deb, tmp / "root")
        stem = root / DB_STEM
        if not stem.with_suffix(".rdb").is_file():
            raise AssetError(f"{deb.name}: no R database at {DB_STEM}.rdb")
        db = read_lazyload_db(stem)
    for split, novels in tqdm(SPLITS.items(), desc="writing Austen splits"):
        lines = [line for novel in novels for line in novel_lines(db, novel, f"{DEB_PACKAGE} {DB_STEM}")]
        (out / split_file(split)).write_text("\n".join(lines), encoding="utf-8")
        log.info("text split %r: %d novels, %d lines", split, len(novels), len(lines))
    (out / "splits.json").write_text(json.dumps({k: list(v) for k, v in SPLITS.items()}, indent=1) + "\n")
