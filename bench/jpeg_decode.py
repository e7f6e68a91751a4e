"""JPEG decoding for `data.name=imagefolder`: PIL (ImageFolder's default loader) vs torchvision.io.

    python bench/jpeg_decode.py [--zip ../shared/data/cifar10/cifar10-jpg-dev.zip] [--images 2000]
                                [--large-images 400 --large-size 256 --quality 90 --grain 0] [--rounds 5]
                                [--threads 1] [--cases 32,224]

End to end for ONE training view of one image (what a DataLoader worker does per sample): decode +
the whole view transform of `ssl_kd.views.view_draw(cfg)` (lightly's SimCLRViewTransform
with the imagefolder defaults at `image_size`), three ways:
  pil        `torchvision.datasets.folder.pil_loader` (open + `Image.open(f).convert("RGB")`, what
             `ImageFolder` uses), then the view on the PIL image;
  tv-tensor  `torchvision.io.read_file` + `decode_jpeg(mode=RGB)`, then the view on the uint8 CHW
             tensor. lightly 1.6 builds the view on torchvision transforms v2 when they exist (here
             they do), so crop/flip/jitter/grayscale run as tensor ops; lightly's GaussianBlur turns
             a tensor into PIL and back on EVERY call (even when it does not blur), returning float;
             lightly's ToTensor (v2 ToImage + ToDtype(scale=True)) then leaves the float alone;
  tv-pil     read_file + decode_jpeg, then a PIL image (`Image.frombuffer` of the HWC buffer that
             decode_jpeg's CHW tensor is a view of), then the view on PIL: the only torchvision.io
             variant that hands the transforms the same kind of image as today (ssl_kd.data's
             eval_transform ends in v1 `T.ToTensor`, which refuses tensors).
Also timed per image, same three ways: the decode alone, and decode + `eval_transform(cfg)`
(tv-tensor has no eval row: v1 ToTensor raises on a tensor).

Cases: (1) `--images` real 32x32 CIFAR-10 JPEGs (the CIFAR-10 JPEG dev subset, libjpeg quality 75),
taken evenly over the zip's train/ files and written byte for byte into a temporary folder (deleted
at the end), views at image_size=32; (2) `--large-images` of them upscaled (bicubic) to
`--large-size` px square and re-encoded at `--quality` (PIL, 4:2:0) in the temporary folder, views
at image_size=224. The upscaled images are smoother than camera photos (fewer bytes per pixel, so a
cheaper entropy decode): the file sizes are printed; `--grain SIGMA` adds grey Gaussian noise
before encoding to get photo-like file sizes (sigma 8: about 3x the bytes).

Timing: in each round every image goes through every step, the steps alternating image by image
(order rotated), each call timed on its own; a warm-up round first (files in the page cache after
it), median over `--rounds` of the mean time per image; torch and numpy are reseeded with the
image's seed before every call so every method draws the same crops/flips/jitters/blurs.
`--threads 1` by default: DataLoader workers run with one torch thread.
Equivalence: decoded pixels PIL vs decode_jpeg (max abs difference, share of images bit-identical),
and the training view with the same seed per image, tv-tensor and tv-pil vs pil (max and mean abs
difference in 1/255 steps).

Prints the load average so that a noisy run can be told from a slow one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import pil_loader
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from ssl_kd.config import DataConfig
from ssl_kd.views import eval_transform, view_draw

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ZIP = REPO.parent / "shared" / "data" / "cifar10" / "cifar10-jpg-dev.zip"
SEED = 0


def tv_tensor(path: str) -> torch.Tensor:
    return decode_jpeg(read_file(path), mode=ImageReadMode.RGB)


def tv_pil(path: str) -> Image.Image:
    # decode_jpeg returns a CHW view of an HWC buffer: permute back (no copy) and let PIL unpack it
    # (the cheapest of Image.fromarray / frombuffer / merging planes measured here)
    hwc = tv_tensor(path).permute(1, 2, 0).contiguous().numpy()
    return Image.frombuffer("RGB", (hwc.shape[1], hwc.shape[0]), hwc, "raw", "RGB", 0, 1)


LOADERS: dict[str, Callable] = {"pil": pil_loader, "tv-tensor": tv_tensor, "tv-pil": tv_pil}


def extract(zip_path: Path, n: int, dest: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(name for name in z.namelist() if name.startswith("train/") and name.endswith(".jpg"))
        step = max(1, len(names) // n)
        paths = []
        for i, name in enumerate(names[::step][:n]):
            path = dest / f"{i:05d}.jpg"
            path.write_bytes(z.read(name))
            paths.append(str(path))
    return paths


def upscale(paths: list[str], size: int, quality: int, grain: float, dest: Path) -> list[str]:
    rng = np.random.default_rng(SEED)
    out = []
    for i, src in enumerate(paths):
        path = dest / f"{i:05d}.jpg"
        image = pil_loader(src).resize((size, size), Image.BICUBIC)
        if grain:
            noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, grain, (size, size, 1))
            image = Image.fromarray(noisy.clip(0, 255).round().astype(np.uint8))
        image.save(path, "JPEG", quality=quality)
        out.append(str(path))
    return out


def timed_passes(paths: list[str], jobs: dict[str, Callable], rounds: int) -> dict[str, float]:
    """Median seconds per image of each job over `rounds` rounds (after a warm-up round).

    Within a round the jobs alternate image by image (the order rotated from one image to the next),
    each job timed on its own, so load from other processes hits all jobs alike. Before each call
    torch and numpy are reseeded with the image's seed (outside the timing): every job draws the same
    crops/flips/jitters/blurs for an image.
    """
    names = list(jobs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds + 1):
        total = dict.fromkeys(names, 0.0)
        for i, path in enumerate(paths):
            shift = (i + round_) % len(names)
            for name in names[shift:] + names[:shift]:
                torch.manual_seed(SEED + i)
                np.random.seed(SEED + i)
                start = time.perf_counter()
                jobs[name](path)
                total[name] += time.perf_counter() - start
        if round_:
            for name in names:
                times[name].append(total[name] / len(paths))
    return {name: statistics.median(t) for name, t in times.items()}


def view_of(loader: Callable, view: Callable) -> Callable:
    return lambda path: view(loader(path))


def equivalence(paths: list[str], view: Callable) -> dict[str, float]:
    pix_max, identical = 0, 0
    diffs: dict[str, list[np.ndarray]] = {"tv-tensor": [], "tv-pil": []}
    for i, path in enumerate(paths):
        ref = np.asarray(pil_loader(path), dtype=np.int16)
        got = tv_tensor(path).permute(1, 2, 0).numpy().astype(np.int16)
        d = int(np.abs(ref - got).max())
        pix_max, identical = max(pix_max, d), identical + (d == 0)
        outs = {}
        for name in ("pil", "tv-tensor", "tv-pil"):
            torch.manual_seed(SEED + i)
            np.random.seed(SEED + i)
            outs[name] = view(LOADERS[name](path))[0]
        for name in diffs:
            diffs[name].append(((outs[name] - outs["pil"]).abs() * 255).numpy().ravel())
    res = {"pixel_max": pix_max, "identical": identical / len(paths)}
    for name, d in diffs.items():
        allv = np.concatenate(d)
        res[f"{name}_max"], res[f"{name}_mean"] = float(allv.max()), float(allv.mean())
    return res


def bench_case(label: str, paths: list[str], image_size: int, rounds: int) -> dict[str, float]:
    cfg = DataConfig(name="imagefolder", image_size=image_size)
    view, evaluate = view_draw(cfg), eval_transform(cfg)
    kb = statistics.mean(os.path.getsize(p) for p in paths) / 1024
    w, h = Image.open(paths[0]).size
    print(f"\n== {label}: {len(paths)} JPEGs {w}x{h}, mean {kb:.1f} KiB, view image_size={image_size} ==")
    jobs = {}
    for name, loader in LOADERS.items():
        jobs[f"decode {name}"] = loader
    for name, loader in LOADERS.items():
        jobs[f"view {name}"] = view_of(loader, view)
    for name in ("pil", "tv-pil"):
        jobs[f"eval {name}"] = view_of(LOADERS[name], evaluate)
    med = timed_passes(paths, jobs, rounds)
    print(f"{'step':<22} {'us/image':>9} {'vs pil':>7}")
    ratios = {}
    for name, sec in med.items():
        kind, method = name.split(" ")
        ratio = med[f"{kind} pil"] / sec
        ratios[name] = ratio
        print(f"{name:<22} {sec * 1e6:9.1f} {ratio:6.2f}x")
    eq = equivalence(paths, view)
    print(f"decoded pixels, PIL vs decode_jpeg: max |diff| {eq['pixel_max']}, bit-identical images "
          f"{eq['identical'] * 100:.1f} %")
    for name in ("tv-tensor", "tv-pil"):
        print(f"training view {name} vs pil (same seed per image): max |diff| {eq[f'{name}_max']:.2f}/255, "
              f"mean {eq[f'{name}_mean']:.4f}/255")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", type=Path, default=DEFAULT_ZIP)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--large-images", type=int, default=400)
    parser.add_argument("--large-size", type=int, default=256)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--grain", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default="32,224")
    args = parser.parse_args()
    if not args.zip.is_file():
        sys.exit(f"{args.zip} not found; pass --zip PATH to cifar10-jpg-dev.zip (see shared/data/README.md)")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import PIL
    import torchvision
    from PIL import features

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__} "
          f"(libjpeg {features.version('jpg')}, turbo {features.check_feature('libjpeg_turbo')}), "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"median of {args.rounds} rounds, steps alternating image by image; 'vs pil' = pil time / this time (>1: faster than PIL)")
    cases = set(args.cases.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="jpeg_bench_"))
    try:
        (tmp / "small").mkdir()
        small = extract(args.zip, max(args.images, args.large_images), tmp / "small")
        summary = {}
        if "32" in cases:
            summary["32"] = bench_case("CIFAR-10 JPEG dev subset, real 32 px", small[: args.images], 32, args.rounds)
        if "224" in cases:
            (tmp / "large").mkdir()
            step = max(1, len(small) // args.large_images)
            large = upscale(small[::step][: args.large_images], args.large_size, args.quality, args.grain, tmp / "large")
            grain = f", grain sigma {args.grain:g}" if args.grain else ""
            summary["224"] = bench_case(f"same images upscaled to {args.large_size} px{grain}, JPEG q{args.quality}",
                                        large, 224, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("end to end (decode + one training view), torchvision.io vs PIL; goal for adopting: > 1.10x")
    for case, ratios in summary.items():
        for name in ("view tv-tensor", "view tv-pil"):
            r = ratios[name]
            print(f"  {case:>3} px  {name[5:]:<9} {r:5.2f}x  {'beats PIL by > 10 %' if r > 1.10 else 'does NOT beat PIL by > 10 %'}")


if __name__ == "__main__":
    main()
