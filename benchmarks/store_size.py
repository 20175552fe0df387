"""Bytes on disk per stored value and files per store (targets: <= 2 bytes per value + 3%, <= 64 files)."""
import argparse
import sys
from pathlib import Path

from common import REPO, report
from interlingua.store import summary


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stores", nargs="*", help="store paths (default: every store under data/activations)")
    args = parser.parse_args()
    stores = [Path(s) for s in args.stores] or sorted((REPO / "data/activations").glob("*/*/*.zarr"))
    if not stores:
        sys.exit("no stores found: run `snakemake --cores all activations` first")
    for path in stores:
        info = summary(path)
        print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {info['rows']} rows, "
              f"{info['tokens']} tokens, layers {info['layers']}, {info['bytes_on_disk'] / 2**20:.1f} MiB, "
              f"{info['files']} files")
        report("  bytes on disk per stored 16-bit value", info["bytes_per_value"], "<= 2.06", info["bytes_per_value"] <= 2.06)
        report("  files per store", info["files"], "<= 64", info["files"] <= 64)


if __name__ == "__main__":
    main()
