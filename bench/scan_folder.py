"""Speed of listing a big folder of images (`data.name=folder`): a full scan against the cached file list.

    python bench/scan_folder.py [N] [--per-folder 1000] [--folders-per-parent 100] [--dir /tmp] [--keep]

Creates N tiny non-empty files (1 byte each, default N = 1,000,000) named `*.jpg` in nested folders
(`top/sub/img_*.jpg`, `--per-folder` files a folder, `--folders-per-parent` folders a parent) in a
fresh temporary folder under `--dir`, waits until every folder is older than
`ssl_kd.image_files.RACY_SECONDS` (a folder modified just before its scan is not cached), then times:

    cold scan       `scan_image_files`: os.scandir of every folder and one stat per file, no cache
    first call      `image_file_list` with an empty cache folder: the scan plus writing the cache
    cached (warm)   `image_file_list` again: read the cache and stat every folder (median of 3)

and prints the ratio cold / warm. Every call must return the same list. The files are deleted at the
end unless `--keep`. "Cold" means no file-list cache, not a cold disk: the files were just written,
so the kernel's inode and directory caches are hot (dropping them needs root); on a network file
system or a cold disk every stat costs far more and the scan is slower still, while the cached load
stats only the folders.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_kd.image_files import RACY_SECONDS, file_list_cache_path, image_file_list, scan_image_files  # noqa: E402
import ssl_kd.evaluation.on_main  # noqa: E402,F401  (image_file_list imports it on first use: not part of the timings)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", nargs="?", type=int, default=1_000_000, help="files to create (default 1,000,000)")
    parser.add_argument("--per-folder", type=int, default=1000, help="files per leaf folder (default 1000)")
    parser.add_argument("--folders-per-parent", type=int, default=100, help="leaf folders per top folder (default 100)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary folder is made (default the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the files (default: delete them at the end)")
    return parser.parse_args(argv)


def create_files(root: Path, n: int, per_folder: int, folders_per_parent: int) -> int:
    """N one-byte `.jpg` files in `root/tNNN/sNNN/`; returns the number of leaf folders."""
    folders = 0
    for start in range(0, n, per_folder):
        leaf = start // per_folder
        folder = root / f"t{leaf // folders_per_parent:04d}" / f"s{leaf % folders_per_parent:04d}"
        folder.mkdir(parents=True)
        folders += 1
        for i in range(start, min(start + per_folder, n)):
            fd = os.open(folder / f"img_{i:08d}.jpg", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, b"x")
            os.close(fd)
    return folders


def timed(call):
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ssl_kd_scan_bench_", dir=args.dir))
    root, cache_dir = work / "images", work / "file-lists"
    try:
        seconds, folders = timed(lambda: create_files(root, args.n, args.per_folder, args.folders_per_parent))
        print(f"created {args.n:,} files in {folders:,} leaf folders under {root} in {seconds:.1f} s")
        time.sleep(RACY_SECONDS + 0.5)  # every folder now safely older than the scans below

        cold, scan = timed(lambda: scan_image_files(root))
        first, listed = timed(lambda: image_file_list(root, cache_dir))
        warm_runs = [timed(lambda: image_file_list(root, cache_dir)) for _ in range(3)]
        warm = statistics.median(seconds for seconds, _ in warm_runs)
        assert len(scan.files.files) == args.n and listed.files == scan.files.files and not listed.from_cache
        assert all(files.from_cache and files.files == scan.files.files for _, files in warm_runs)
        cache_mb = file_list_cache_path(root, cache_dir).stat().st_size / 2**20

        print(f"cold scan (scandir + stat, no cache): {cold:8.2f} s  ({cold / args.n * 1e6:.2f} us/file)")
        print(f"first call (scan + write the cache):  {first:8.2f} s  (cache file {cache_mb:.1f} MiB)")
        print(f"cached list (warm, median of 3):      {warm:8.2f} s  ({len(scan.folder_mtimes):,} folders statted)")
        print(f"cold / warm: {cold / warm:.1f}x")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            start = time.perf_counter()
            shutil.rmtree(work)
            print(f"deleted {work} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
