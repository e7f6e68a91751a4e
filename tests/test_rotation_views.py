"""`data.views`: two SimCLR crops, or DLKD's four rotations of one crop."""

import pytest
import torch

from ssl_kd.config import DataConfig, load_config
from ssl_kd.data import build_dataset
from ssl_kd.views import RotatedViews, views_transform
from ssl_kd.loaders import make_loader
from ssl_kd.errors import UserError
from ssl_kd.losses.dlkd import correlation_loss


def _cfg(views="rotations"):
    return DataConfig(name="digits", image_size=24, min_scale=0.3, views=views)


def test_rotations_give_four_views_each_the_first_turned_by_k_quarters():
    cfg = _cfg()
    torch.manual_seed(0)
    dataset = build_dataset(cfg, "train", views_transform(cfg))
    views, label, index = dataset[3]
    assert isinstance(dataset.transform, RotatedViews) and len(views) == 4
    for k, view in enumerate(views):
        assert view.shape == (3, 24, 24) and 0.0 <= view.min() and view.max() <= 1.0
        assert torch.equal(view, torch.rot90(views[0], k, dims=(-2, -1)))
    assert not torch.equal(views[0], views[1])  # a digit is not rotation-symmetric
    assert torch.equal(torch.rot90(views[3], 1, dims=(-2, -1)), views[0])  # four quarter turns are the identity
    assert index == 3 and label == dataset.base[3][1]


def test_each_call_draws_a_new_crop():
    cfg = _cfg()
    transform = views_transform(cfg)
    image = build_dataset(cfg, "train", None)[0][0]
    torch.manual_seed(1)
    first = transform(image)[0]
    second = transform(image)[0]
    assert not torch.equal(first, second)


def test_the_loader_stacks_four_views_view_major_for_the_losses():
    cfg = _cfg()
    dataset = build_dataset(cfg, "train", views_transform(cfg))
    views, labels, indices = next(iter(make_loader(dataset, 4, train=True, num_workers=0)))
    assert len(views) == 4 and all(v.shape == (4, 3, 24, 24) for v in views)
    assert torch.equal(views[2], torch.rot90(views[0], 2, dims=(-2, -1)))
    # DLKD's correlation term runs on the 4 views, view 0 (unrotated) as the anchors
    rows = torch.randn(16, 8)
    assert torch.isfinite(correlation_loss(rows, rows.flip(1), num_views=4, temperature=0.5))


def test_crops_stay_the_default_and_unknown_modes_are_user_errors():
    assert DataConfig().views == "crops"
    assert len(views_transform(_cfg("crops"))(build_dataset(_cfg(), "train", None)[0][0])) == 2
    with pytest.raises(UserError, match="data.views='flips'"):
        views_transform(_cfg("flips"))
    assert load_config(overrides=["data.views=rotations"]).data.views == "rotations"


@pytest.mark.parametrize("views", ["crops", "rotations"])
def test_the_transform_says_how_many_views_it_makes(views):
    from ssl_kd.views import num_views

    transform = views_transform(_cfg(views))
    image = build_dataset(_cfg(), "train", None)[0][0]
    assert transform.num_views == num_views(_cfg(views)) == len(transform(image)) == {"crops": 2, "rotations": 4}[views]
