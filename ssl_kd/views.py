"""View transforms: the SSL views a training step sees, and the deterministic evaluation transform.

Images leave them as float tensors in [0, 1] with no normalization (each network normalizes its own
input). `view_draw(cfg)` is one random draw (one crop, or one crop in four rotations); a training step
takes `DRAWS_PER_STEP[data.views]` draws (`views_transform`: `num_views(cfg)` views an image). The
teacher cache and `data.seeded_views` draw them reproducibly instead (`ssl_kd.seeded_views`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torchvision.transforms as T

from .config import DataConfig
from .data import resolve_data_config
from .errors import UserError

VIEW_MODES = ("crops", "rotations")


class RotatedViews:
    """One augmented view of the image, then that view turned by 0, 90, 180 and 270 degrees.

    Returns 4 tensors: view k = `torch.rot90(view_0, k, dims=(-2, -1))` (counter-clockwise), so view
    0 is the unrotated one, DLKD's anchors. DLKD's own code rotates first
    and crops each rotation separately; here the four views share one crop and differ only by the turn.
    """

    num_views = 4  # tensors per call

    def __init__(self, view: Callable):
        self.view = view

    def __call__(self, image) -> list[torch.Tensor]:
        base = self.view(image)
        return [torch.rot90(base, k, dims=(-2, -1)) for k in range(4)]


def view_draw(cfg: DataConfig):
    """One random draw of SSL views from an image: lightly's SimCLR view transform, sized to the image.

    Returns a callable image -> list of tensors: `data.views="crops"`: one crop ([view]);
    `"rotations"`: one crop turned by 0/90/180/270 degrees (`RotatedViews`, four views). What a step
    takes is `DRAWS_PER_STEP[cfg.views]` draws. All randomness comes from torch's and numpy's global
    generators (lightly's blur and rotation use numpy), so seeding both fixes a draw
    (`ssl_kd.seeded_views`).
    """
    cfg = resolve_data_config(cfg)
    if cfg.views not in VIEW_MODES:
        raise UserError(f"data.views={cfg.views!r} is not one of: {', '.join(VIEW_MODES)}")
    from lightly.transforms import SimCLRViewTransform

    view = SimCLRViewTransform(
        input_size=cfg.image_size,
        cj_prob=cfg.color_jitter,
        cj_strength=cfg.jitter_strength,
        min_scale=cfg.min_scale,
        random_gray_scale=cfg.grayscale,
        gaussian_blur=cfg.blur,
        hf_prob=cfg.hflip,
        rr_prob=cfg.rotation,
        rr_degrees=cfg.rotation_degrees,
        normalize=None,
    )
    return RotatedViews(view) if cfg.views == "rotations" else SingleView(view)


class SingleView:
    """A view transform as a draw: image -> [view]."""

    num_views = 1  # tensors per call

    def __init__(self, view: Callable):
        self.view = view

    def __call__(self, image) -> list[torch.Tensor]:
        return [self.view(image)]


# draws a step takes per image: two independent crops, or one crop in its four rotations
DRAWS_PER_STEP = {"crops": 2, "rotations": 1}
VIEWS_PER_DRAW = {"crops": 1, "rotations": 4}


class MultiDraw:
    """`draws` independent draws of `draw`, their views concatenated (image -> list of tensors)."""

    def __init__(self, draw: Callable, draws: int):
        self.draw, self.draws = draw, draws
        self.num_views = draws * draw.num_views  # tensors per call

    def __call__(self, image) -> list[torch.Tensor]:
        return [view for _ in range(self.draws) for view in self.draw(image)]


def num_views(cfg: DataConfig) -> int:
    """Views per image a training step sees: 2 crops, or 4 rotations of one crop."""
    return DRAWS_PER_STEP[cfg.views] * VIEWS_PER_DRAW[cfg.views]


def views_transform(cfg: DataConfig):
    """The training transform: image -> the views of a step (`view_draw`, drawn `DRAWS_PER_STEP` times
    from torch's and numpy's global generators); its `num_views` says how many, equal to `num_views(cfg)`."""
    draw, draws = view_draw(cfg), DRAWS_PER_STEP[resolve_data_config(cfg).views]
    return draw if draws == 1 else MultiDraw(draw, draws)


def eval_transform(cfg: DataConfig):
    """Deterministic: resize the short side (with the usual 0.875 crop ratio above 64 px), centre crop."""
    cfg = resolve_data_config(cfg)
    resize = cfg.image_size if cfg.image_size <= 64 else int(round(cfg.image_size / 0.875))
    return T.Compose([T.Resize(resize), T.CenterCrop(cfg.image_size), T.ToTensor()])
