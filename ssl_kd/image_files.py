"""Image files on disk: the cached file list of a folder, and the record of images that cannot be read.

File list (`data.name=folder`): `image_file_list(root, cache_dir)` finds every image under `root`,
recursively: extensions jpg, jpeg, png, webp, bmp in any case; names starting with "." (hidden
files and folders) skipped; symlinked folders followed once. The list is sorted by relative path,
so index i names the same file on every run and every process. Scanning uses `os.scandir` and one
`stat` per image file (for its size; zero-byte files are left out of the list and counted as
unreadable); no image is opened.

The scan is done once and cached: a JSON file in `cache_dir` (`data.file_list_dir`; default
`$XDG_CACHE_HOME/ssl_kd/file-lists`, else `~/.cache/ssl_kd/file-lists`) named by a hash of the
absolute root, holding the list and the `st_mtime_ns` of every folder scanned. A later call stats
those folders and reuses the list when none changed: adding, removing or renaming a file changes
its folder's mtime, so the list is rebuilt. (Rewriting a file in place does not; a file emptied or
damaged since the scan is then caught when it is read.) A folder modified less than
`RACY_SECONDS` before its scan is not trusted (a file added in the same clock tick as the scan
would leave the mtime unchanged): no cache is written then, and the next run scans again. Writes
are atomic (temp file + `os.replace`); a cache folder that cannot be written is not an error: one
warning, and the run goes on with the fresh scan. Under torchrun rank 0 scans or reads the cache
and broadcasts the list.

Unreadable images: `UnreadableImages` is a shared-memory code per image (0 = not seen failing),
written by `ssl_kd.data.IndexedDataset.load` in whichever DataLoader worker reads the image and
seen by the training process; `UnreadableCheck` is the loop's `data_check` that stops the run once
more than `data.max_bad_fraction` of the training images are unreadable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .parallel import collective_device, is_distributed, is_main_process

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Bump when the scan's rules or the file layout change: old cache files then stop matching and are rewritten.
_CACHE_FORMAT = "ssl_kd-file-list-v1"
_KEY_CHARS = 24
RACY_SECONDS = 2.0  # mtimes this close to the scan's start may hide a later change (coarse file-system clocks)

log = logging.getLogger("ssl_kd")


@dataclass
class FileList:
    """The image files under `root`: `files` (relative paths, '/'-separated, sorted) and `empty`
    (zero-byte image files, left out of `files`)."""

    root: str
    files: list[str]
    empty: list[str] = field(default_factory=list)
    from_cache: bool = False  # read from the cache rather than scanned

    def path(self, index: int) -> str:
        """The absolute path of file `index`."""
        return os.path.join(self.root, self.files[index])

    def empty_paths(self) -> list[str]:
        return [os.path.join(self.root, name) for name in self.empty]


@dataclass
class FolderScan:
    """What one scan found: the file list, the mtime (ns) of every folder it listed by relative path,
    and when the scan started (ns since the epoch)."""

    files: FileList
    folder_mtimes: dict[str, int]
    started_ns: int

    def trustworthy(self) -> bool:
        """Every folder's mtime safely older than the scan: a later change will show as a newer mtime."""
        return _all_older(self.folder_mtimes, self.started_ns)


def _all_older(folder_mtimes: dict[str, int], scanned_ns: int) -> bool:
    return max(folder_mtimes.values(), default=0) < scanned_ns - int(RACY_SECONDS * 1e9)


def default_file_list_dir() -> Path:
    """`$XDG_CACHE_HOME/ssl_kd/file-lists`, else `~/.cache/ssl_kd/file-lists`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ssl_kd" / "file-lists"


def is_image_name(name: str) -> bool:
    """An image file name: not hidden, and one of `IMAGE_EXTENSIONS` in any case."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def scan_image_files(root: str | Path) -> FolderScan:
    """Every image under `root` (see the module docstring), by `os.scandir`, without the cache.

    Each folder's mtime is read before its entries are listed, so a file added during the scan
    leaves a newer mtime than the one recorded and the next call rescans."""
    root = _checked_root(root)
    started_ns = time.time_ns()
    found, empty, mtimes = [], [], {}
    visited: set[tuple[int, int]] = set()  # (device, inode) of the folders listed: symlink loops end here
    pending = [""]
    while pending:
        relative = pending.pop()
        folder = os.path.join(root, relative) if relative else root
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in visited:
                continue
            visited.add((info.st_dev, info.st_ino))
            mtimes[relative] = info.st_mtime_ns
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    name = f"{relative}/{entry.name}" if relative else entry.name
                    if entry.is_dir():
                        pending.append(name)
                    elif entry.is_file() and is_image_name(entry.name):
                        (found if entry.stat().st_size > 0 else empty).append(name)
        except OSError as err:
            raise UserError(f"cannot list the folder {folder} ({type(err).__name__}: {err.strerror or err}); "
                            "fix its permissions or move it out of the data root") from None
    return FolderScan(FileList(root, sorted(found), sorted(empty)), mtimes, started_ns)


def image_file_list(root: str | Path, cache_dir: str | Path | None = None) -> FileList:
    """The image files under `root`, from the cache in `cache_dir` (None: `default_file_list_dir()`)
    when no folder changed since it was written, else scanned (and the cache rewritten, unless a
    folder changed within `RACY_SECONDS` of the scan). Under
    torchrun rank 0 does this and every rank gets its list; every rank must call it. An empty
    result is a `UserError`."""
    from .evaluation.on_main import on_main_process  # here, not at the top: ssl_kd.evaluation imports ssl_kd.data

    files = on_main_process(lambda: _cached_or_scanned(root, cache_dir))
    if not files.files:
        raise UserError(f"no images under {files.root} ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}, any case, "
                        f"hidden files skipped{f'; {len(files.empty)} empty files' if files.empty else ''}); "
                        "point --data-root at a folder of images")
    return files


def file_list_cache_path(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the cached list of `root` lives: a hash of its absolute path in `cache_dir`."""
    key = hashlib.sha256(str(_checked_root(root)).encode()).hexdigest()[:_KEY_CHARS]
    return Path(cache_dir if cache_dir is not None else default_file_list_dir()) / f"{key}.json"


def _checked_root(root: str | Path) -> str:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise UserError(f"data root {root} is not a folder; pass --data-root DIR, a folder of images (sub-folders allowed)")
    return str(path)


def _cached_or_scanned(root: str | Path, cache_dir: str | Path | None) -> FileList:
    root = _checked_root(root)
    cache_path = file_list_cache_path(root, cache_dir)
    cached = _read_cache(cache_path, root)
    if cached is not None:
        return cached
    scan = scan_image_files(root)
    if scan.trustworthy():
        _write_cache(cache_path, scan)
    return scan.files


def _read_cache(path: Path, root: str) -> FileList | None:
    """The cached list when the file is ours, for `root`, and no folder it recorded has changed; else None."""
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
    except (FileNotFoundError, NotADirectoryError):  # no cache yet (or no cache folder): scan, and say so only if writing fails
        return None
    except (OSError, ValueError) as err:
        warnings.warn(f"file list: ignoring unreadable cache {path} ({err}); rescanning", RuntimeWarning, stacklevel=4)
        return None
    if not isinstance(stored, dict) or stored.get("format") != _CACHE_FORMAT or stored.get("root") != root:
        return None
    if not _all_older(stored["folder_mtimes"], stored["scanned_ns"]):
        return None
    for relative, mtime in stored["folder_mtimes"].items():
        try:
            if os.stat(os.path.join(root, relative) if relative else root).st_mtime_ns != mtime:
                return None
        except OSError:  # a folder removed since the scan
            return None
    return FileList(root, stored["files"], stored["empty"], from_cache=True)


def _write_cache(path: Path, scan: FolderScan) -> None:
    """Atomically: a temp file in the cache folder, then `os.replace`. Failure is a warning, not an error."""
    record = {"format": _CACHE_FORMAT, "root": scan.files.root, "scanned_ns": scan.started_ns, "folder_mtimes": scan.folder_mtimes,
              "files": scan.files.files, "empty": scan.files.empty}
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False,
                                         encoding="utf-8") as f:
            temp = f.name
            json.dump(record, f, separators=(",", ":"))
        os.replace(temp, path)
    except OSError as err:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        warnings.warn(f"file list: could not write the cache {path} ({err}); the folder will be scanned again next run "
                      "(set data.file_list_dir to a writable folder to keep it)", RuntimeWarning, stacklevel=4)


# What reading a damaged image raises in PIL: OSError (UnidentifiedImageError and truncated files included),
# ValueError, SyntaxError (some broken PNG/GIF headers), DecompressionBombError (not an OSError).
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

# Codes of `UnreadableImages`: 0 = not seen failing; the rest name how an image failed.
KINDS = ("", "empty file", "not an image PIL can identify", "truncated", "file missing", "OSError", "ValueError",
         "SyntaxError", "decompression bomb")
EMPTY_FILE = KINDS.index("empty file")


def error_kind(error: BaseException) -> int:
    """The `KINDS` code of a read error."""
    message = str(error).lower()
    if isinstance(error, Image.DecompressionBombError):
        return KINDS.index("decompression bomb")
    if isinstance(error, UnidentifiedImageError):
        return KINDS.index("not an image PIL can identify")
    if isinstance(error, FileNotFoundError):
        return KINDS.index("file missing")
    if isinstance(error, OSError) and ("truncat" in message or "broken data stream" in message):
        return KINDS.index("truncated")
    if isinstance(error, ValueError):
        return KINDS.index("ValueError")
    if isinstance(error, SyntaxError):
        return KINDS.index("SyntaxError")
    return KINDS.index("OSError")


class UnreadableImages:
    """Which of a dataset's `size` images could not be read, and how, across DataLoader workers.

    `codes` is a uint8 tensor in shared memory, made in the dataset's `__init__`, so workers (forked or
    spawned) write into the memory the training process reads: `mark(i, error)` sets image i's code
    (`KINDS`). `excluded` are the files left out of the dataset before indexing (zero-byte files); they
    count as unreadable too. Under torchrun each rank records only what its own workers read:
    `across_processes()` (collective) gives the union of all ranks."""

    def __init__(self, size: int, excluded: Sequence[str] = (), codes: torch.Tensor | None = None):
        self.codes = codes if codes is not None else torch.zeros(size, dtype=torch.uint8).share_memory_()
        self.excluded = list(excluded)

    def __len__(self) -> int:
        """Images in the dataset plus the files left out before indexing: what `max_bad_fraction` is a fraction of."""
        return len(self.codes) + len(self.excluded)

    def mark(self, index: int, error: BaseException) -> None:
        self.codes[index] = error_kind(error)

    def is_marked(self, index: int) -> bool:
        return bool(self.codes[index])

    def indices(self) -> list[int]:
        """Dataset indices of the images seen failing, ascending."""
        return torch.nonzero(self.codes).flatten().tolist()

    def count(self) -> int:
        """Distinct unreadable images: those seen failing plus the excluded files."""
        return int(torch.count_nonzero(self.codes)) + len(self.excluded)

    def examples(self, path_of: Callable[[int], str | None], limit: int = 3) -> list[str]:
        """Up to `limit` unreadable files as 'path (kind)': excluded files first, then failing images by index."""
        named = [f"{path} ({KINDS[EMPTY_FILE]})" for path in self.excluded[:limit]]
        for index in self.indices()[: limit - len(named)]:
            named.append(f"{path_of(index) or f'image {index}'} ({KINDS[int(self.codes[index])]})")
        return named

    def across_processes(self) -> "UnreadableImages":
        """The record of every rank (an all-reduce MAX of the codes); itself in one process. Every rank
        must call it. While no rank has seen a failure, only one number travels."""
        if not is_distributed():
            return self
        device = collective_device()
        any_marked = torch.tensor([int(torch.count_nonzero(self.codes))], device=device)
        dist.all_reduce(any_marked, op=dist.ReduceOp.MAX)
        if not int(any_marked):
            return self
        codes = self.codes.to(device, copy=True)
        dist.all_reduce(codes, op=dist.ReduceOp.MAX)
        return UnreadableImages(len(codes), self.excluded, codes=codes.cpu())


class UnreadableCheck:
    """`fit(..., data_check=...)`: stops the run with one line once more than floor(`max_bad_fraction` x N)
    of the N training images are unreadable, and returns {"unreadable_images": count} for the epoch
    summary when there are any. Collective under torchrun: every rank calls it at the same steps."""

    def __init__(self, unreadable: UnreadableImages, max_bad_fraction: float, path_of: Callable[[int], str | None]):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise UserError(f"data.max_bad_fraction={max_bad_fraction} is not a fraction; give a number from 0 to 1 (default 0.01)")
        self.unreadable, self.max_bad_fraction, self.path_of = unreadable, max_bad_fraction, path_of
        self.limit = math.floor(max_bad_fraction * len(unreadable))
        self.reported = 0

    def __call__(self) -> dict[str, int]:
        seen = self.unreadable.across_processes()
        count = seen.count()
        if count > self.limit:
            raise UserError(f"{count} of {len(seen)} training images are unreadable, more than data.max_bad_fraction="
                            f"{self.max_bad_fraction} allows ({self.limit}): {', '.join(seen.examples(self.path_of))}"
                            f"{', ...' if count > 3 else ''}; remove or repair these files, or raise data.max_bad_fraction")
        if count > self.reported and is_main_process():
            log.warning(f"skipping {count} unreadable images so far (each replaced by the next readable one; "
                        f"data.max_bad_fraction allows {self.limit}), e.g. {', '.join(seen.examples(self.path_of, 1))}")
        self.reported = max(self.reported, count)
        return {"unreadable_images": count} if count else {}
