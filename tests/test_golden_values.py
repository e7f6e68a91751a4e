"""Golden values: every registered distillation method against a re-implementation of its reference code.

For each name in the registry `ssl_kd.losses.METHODS` the cases (tests/golden_cases.py) build the method as training
does (`build_method(LossConfig(...), MethodDims(...))`), run its forward once on a fixed, seeded,
float64 input of a few images, and compare EVERY value it returns (the total and each logged part)
with the same quantity computed by the reference code's formula, re-implemented in
tests/golden_reference.py from reading that code, at rtol = atol = 1e-6.

The golden side never calls ssl_kd's loss helpers. From the project it only reads the trainable
weights the method owns (DLKD's correlation and SupCon heads, CRD's embeds, the logit heads,
FitNet's regressor), the state the test set itself (queues, memory banks) and the random draws the
method made (CRD's negatives, STKD's lam and permutation), recorded as they happen.

Layouts. The project stacks views view-major (rows [v*B:(v+1)*B] are view v). DLKD's reference lays
its 4 rotations out image-major (row % 4 is the rotation, 0 the normal image): the DLKD inputs are
built in that layout, the golden runs on them as they are, and the project gets them permuted to
view-major, so a wrong ordering in the project shows up as a different value
(`test_dlkd_golden_rejects_unpermuted_rows` checks that it would). The single-view references (KD,
CKD, DIST, ...) get each view as its own batch where the project's docstring says the loss is taken
per view (CKD), and the V*B rows as one batch where every row is a sample.

Deliberate departures the project documents are fed to the reference formula as the project feeds
them (each case says which): pseudo-logits over the queue stand in for the logits of a label-free
teacher, with tau = 1 for KD, STKD and DIST; DLKD's SupCon runs without labels; CRD's V views share
their image's bank rows and negatives.

A registered method without an entry in GOLDEN_CASES fails `test_golden_value`: a new method must
come with its golden value.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from golden_cases import (ROTATIONS, STUDENT_DIM, TEACHER_DIM, build, ckd_case, compress_case, crd_case, dist_case, dlkd_case,
                          dlkd_golden, dlkd_project_inputs, dlkd_reference_inputs, dlkd_settings, fitnet_case, kd_case,
                          rkd_case, seed_case, sp_case, stkd_case, views_ctx)

from ssl_kd.config import LossConfig
from ssl_kd.losses import METHODS, MethodDims


TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}


@pytest.fixture(autouse=True)
def float64_and_restored_rng():
    """float64 for every tensor and module the case builds; the default dtype and the global RNG restored after."""
    dtype, rng = torch.get_default_dtype(), torch.get_rng_state()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)
    torch.set_rng_state(rng)


# --------------------------------------------------------------------------------------------
# the registry of golden cases, and the tests

GOLDEN_CASES: dict[str, dict[str, Callable]] = {
    "ckd": {"pseudo_logits": ckd_case(False), "real_logits": ckd_case(True)},
    "compress": {"one_queue": compress_case("compress", 1), "two_queues": compress_case("compress", 2)},
    "compress_1q": {"one_queue": compress_case("compress_1q", 1)},
    "compress_2q": {"two_queues": compress_case("compress_2q", 2)},
    "crd": {"sampled_rows": crd_case(num_samples=12, negatives=5), "dense_scores": crd_case(num_samples=5, negatives=6)},
    "dist": {"pseudo_logits": dist_case(False), "real_logits": dist_case(True)},
    "dlkd": {"queue_contrast": dlkd_case("dlkd", "queue"), "supcon_contrast": dlkd_case("dlkd", "supcon")},
    "dlkd_align": {"align_only": dlkd_case("dlkd_align", "queue")},
    "dlkd_corr": {"corr_only": dlkd_case("dlkd_corr", "queue")},
    "fitnet": {"same_size_hint": fitnet_case},
    "kd": {"pseudo_logits": kd_case(False), "pseudo_logits_first_step": kd_case(False, first_step=True), "real_logits": kd_case(True)},
    "rkd": {"distance_and_angle": rkd_case},
    "seed": {"code_temperatures": seed_case(1e-4), "soft_teacher": seed_case(0.07)},
    "sp": {"last_stage_maps": sp_case},
    "stkd": {"pseudo_logits": stkd_case(False), "real_logits": stkd_case(True)},
}

# (method, case) -> reason: golden values that disagree with the project through an undocumented departure
KNOWN_DISAGREEMENTS: dict[tuple[str, str], str] = {}


def golden_params() -> list:
    params = []
    for name in sorted(METHODS):
        cases = GOLDEN_CASES.get(name, {})
        if not cases:
            params.append(pytest.param(name, None, id=f"{name}-no_golden_value"))
        for case in cases:
            reason = KNOWN_DISAGREEMENTS.get((name, case))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(name, case, id=f"{name}-{case}", marks=marks))
    return params


@pytest.mark.parametrize("name, case", golden_params())
def test_golden_value(name, case, monkeypatch):
    if case is None:
        pytest.fail(f"method {name!r} is registered but has no golden value: add a re-implementation of its reference "
                    f"formula to tests/golden_reference.py and a case for {name!r} to GOLDEN_CASES in {__name__}.py")
    project, golden = GOLDEN_CASES[name][case](monkeypatch)
    assert set(project) == set(golden), f"{name}: the method returns {sorted(project)}, the golden covers {sorted(golden)}"
    for key, expected in golden.items():
        torch.testing.assert_close(project[key].detach(), expected.detach(), **TOLERANCE,
                                   msg=lambda message, key=key: f"{name} [{case}] {key!r}: {message}")


def test_every_golden_case_names_a_registered_method():
    assert set(GOLDEN_CASES) <= set(METHODS), f"golden cases for unregistered methods: {sorted(set(GOLDEN_CASES) - set(METHODS))}"


def test_dlkd_golden_rejects_unpermuted_rows():
    """The layout matters: the reference's image-major rows handed to the project without the permutation
    give another correlation, so the golden comparison does check the view ordering."""
    name, tau = "dlkd_corr", 0.2
    method = build(LossConfig(method=name, dlkd=dlkd_settings("queue", tau)), MethodDims(STUDENT_DIM, TEACHER_DIM))
    rows = dlkd_reference_inputs(6)
    out = method(*dlkd_project_inputs(rows, permute=False), rows["queue"], views_ctx(ROTATIONS))
    golden = dlkd_golden(method, name, rows, "queue", tau)
    assert not torch.allclose(out["corr"], golden["corr"], rtol=1e-3, atol=1e-3)
