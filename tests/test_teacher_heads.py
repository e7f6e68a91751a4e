"""SSL projection heads: each family's head kept from its file.

Each family's test writes a tiny checkpoint with the head under the official key names (tests/head_files.py),
loads it, and checks that in the head space `emb` equals the head computed by hand from the file's own
tensors on the backbone feature (`feat` unchanged, `embed_dim` the head's width), and that the backbone
space is what it always was.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _models import images, random_model
from head_files import FAMILIES, _lin, _moco_v2, _prefixed, _root_logging_restored  # noqa: F401  (the fixture applies here too)

from ssl_kd.errors import UserError
from ssl_kd.features import _batch_features
from ssl_kd.teachers import load_teacher

REPO = Path(__file__).resolve().parents[1]
SHIPPED = str(REPO / "ssl_kd" / "assets" / "digits_resnet14t_simclr.pth")  # an ssl_kd file: no head

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.mark.parametrize("family", FAMILIES)
def test_head_space_is_the_files_head_on_the_backbone_feature(tmp_path: Path, family: str) -> None:
    build, backbone, layout = FAMILIES[family]
    model = backbone()
    path, head, by_hand, width, name = build(tmp_path, model)
    teacher = load_teacher(path)
    assert teacher.format == layout and teacher.head_info is not None and teacher.head_info.name.startswith(name)
    assert (teacher.embedding, teacher.embed_dim, teacher.head_info.dim) == ("backbone", model.num_features, width)
    loaded = teacher.projection_head.state_dict()
    stored = {key if key[0].isdigit() else f"0.{key}": value for key, value in head.items()}  # a bare Linear: index 0
    assert set(loaded) == set(stored)
    for key, value in stored.items():  # the file's own tensors, key for key
        assert torch.equal(loaded[key], value), key

    x = images()
    backbone_out = teacher(x)
    assert torch.equal(backbone_out.emb, backbone_out.feat)  # the backbone space: unchanged
    on_head = teacher.with_embedding("head")
    out = on_head(x)
    assert (on_head.embedding, on_head.embed_dim, on_head.feat_dim) == ("head", width, model.num_features)
    assert torch.equal(out.feat, backbone_out.feat)  # feat stays the backbone feature
    assert out.emb.shape == (2, width)
    assert torch.allclose(out.emb, by_hand(out.feat, head), atol=1e-5, rtol=1e-5)
    assert on_head.backbone is teacher.backbone and not any(p.requires_grad for p in on_head.parameters())
    assert teacher.embedding == "backbone"  # the view leaves the loaded teacher as it was
    assert torch.equal(_batch_features(out), backbone_out.feat)  # what evaluation reads: the backbone feature


def test_teachers_without_a_head_have_none(tmp_path: Path) -> None:
    """A plain timm file, tonylins' SimCLR v1 conversion (supervised fc only), the project's own file: no head."""
    model = random_model("resnet18")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    for path in (tmp_path / "plain.pth", SHIPPED):
        teacher = load_teacher(path)
        assert teacher.projection_head is None and teacher.head_info is None and teacher.info.head_problem is None
        with pytest.raises(UserError, match=r"teacher.embedding=head: .* carries no SSL projection head; "
                                            r"use teacher.embedding=backbone") as err:
            teacher.with_embedding("head")
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_head_that_does_not_fit_is_reported_not_fatal(tmp_path: Path) -> None:
    """A projector whose first layer does not take the backbone's width: the backbone loads, the head is named unusable."""
    model = random_model("resnet18")
    state = _prefixed(model.state_dict(), "encoder.") | _prefixed(_lin(64, 64, "0", bias=False), "projector.")
    torch.save(state, tmp_path / "checkpoint_1.tar")
    teacher = load_teacher(tmp_path / "checkpoint_1.tar")
    assert teacher.projection_head is None and "takes 64 features, but 512 reach it" in teacher.info.head_problem
    with pytest.raises(UserError, match=r"has a projection head that cannot be used \(projector\.\*: layer 0"):
        teacher.with_embedding("head")
