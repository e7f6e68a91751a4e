"""Every registered method and checkpoint layout, through public behaviour: each method trains two steps
on the embedded teacher (gradients reach the student, the teacher stays as it was), each layout's detector answers any object with True or False."""

from __future__ import annotations

import pytest
import torch

from ssl_kd.config import load_config
from ssl_kd.distillation import build_objective, build_student, method_names
from ssl_kd.safe_unpickle import StandIn
from ssl_kd.defaults import default_teacher
from ssl_kd.teachers import load_teacher
from ssl_kd.teachers.formats import layouts

ODD_OBJECTS = [None, 3, "text", [1], (), {}, {"state_dict": 3}, {"state_dict": {}}, {"model": None},
               {"state_dict": {"x": "not a tensor"}}, {1: torch.zeros(1)}, StandIn(), {"state_dict": StandIn()}]


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(default_teacher("digits"))


@pytest.mark.parametrize("method", method_names())
def test_every_method_trains_a_step_and_leaves_the_teacher_alone(method: str, teacher) -> None:
    overrides = [f"loss.method={method}", "loss.queue_size=16", "student.proj_hidden=32", "loss.crd.negatives=8"]
    cfg = load_config(overrides=overrides)
    torch.manual_seed(0)
    student = build_student(cfg, teacher)
    objective = build_objective(cfg, teacher, student, num_samples=16)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    for step in range(2):  # as the loop runs them: the second step sees the queue and banks the first one filled
        views = [torch.rand(8, 3, 32, 32) for _ in range(2)]
        out = objective(views, torch.arange(8 * step, 8 * step + 8))
        losses, state = out if isinstance(out, tuple) else (out, None)
        assert torch.isfinite(losses["loss"]) and losses["loss"].requires_grad, method
        if step == 0 and state is not None:  # ssl_scratch's SimCLR objective keeps no state between steps
            objective.after_step(state)
    losses["loss"].backward()
    grads = [p.grad for p in student.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{method}: no gradient reaches the student backbone"
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("layout", layouts(), ids=lambda layout: layout.name)
def test_every_layout_detector_answers_odd_objects_with_a_bool(layout) -> None:
    for obj in ODD_OBJECTS:
        assert layout.detect(obj) in (True, False), (layout.name, obj)
    assert layout.summary and layout.name
