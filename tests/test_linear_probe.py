"""Linear probe: recovers a linear rule, matches scikit-learn, selection rule, errors."""

import json
import warnings

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ssl_kd.errors import UserError
from ssl_kd.evaluation import fit_logistic_regression, linear_probe


@pytest.fixture(autouse=True)
def one_thread():
    """These problems are tiny: one thread is fastest, and two OpenMP threads stall badly when
    the 2-core test machine is busy (seconds instead of milliseconds per L-BFGS fit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear_rule(n: int, gen: torch.Generator, w_true: torch.Tensor, noise: float = 0.0):
    """Features N(0, 1); labels argmax(X W + noise * Gumbel), i.e. softmax sampling when noise=1."""
    x = torch.randn(n, w_true.shape[0], generator=gen)
    gumbel = -torch.log(-torch.log(torch.rand(n, w_true.shape[1], generator=gen)))
    return x, (x @ w_true + noise * gumbel).argmax(1)


def test_recovers_a_known_linear_rule():
    gen = torch.Generator().manual_seed(0)
    w_true = torch.randn(12, 4, generator=gen)
    x_train, y_train = _linear_rule(500, gen, w_true)
    x_test, y_test = _linear_rule(1000, gen, w_true)
    result = linear_probe(x_train, y_train, x_test, y_test)
    assert result["top1"] >= 95.0
    assert result["top5"] == 100.0  # 4 classes
    assert result["solver"] == "lbfgs"
    assert set(result["val_top1"]) == {1e-6, 1e-5, 1e-4, 1e-3, 1e-2}
    assert result["weight_decay"] in result["val_top1"]
    json.dumps(result)  # JSON-ready


def test_agrees_with_sklearn_on_noisy_labels():
    gen = torch.Generator().manual_seed(1)
    w_true = torch.randn(10, 4, generator=gen)
    x_train, y_train = _linear_rule(500, gen, w_true, noise=1.0)
    x_test, y_test = _linear_rule(2000, gen, w_true, noise=1.0)
    wd = 1e-3
    n = len(x_train)

    scaler = StandardScaler().fit(x_train.numpy())
    sk = LogisticRegression(C=1.0 / (2 * n * wd), max_iter=1000, tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sk.fit(scaler.transform(x_train.numpy()), y_train.numpy())
    sk_top1 = 100.0 * (sk.predict(scaler.transform(x_test.numpy())) == y_test.numpy()).mean()
    ours = linear_probe(x_train, y_train, x_test, y_test, weight_decays=(wd,))
    assert 50.0 < sk_top1 < 90.0  # far from both chance and 100 %: the comparison means something
    assert ours["val_top1"] == {} and ours["weight_decay"] == wd
    assert abs(ours["top1"] - sk_top1) <= 0.5

    # same optimum, not only the same accuracy: compare test-set class probabilities
    x_std = torch.from_numpy(scaler.transform(x_train.numpy())).float()
    probe = fit_logistic_regression(x_std, y_train, 4, wd)
    x_test_std = torch.from_numpy(scaler.transform(x_test.numpy())).float()
    with torch.no_grad():
        probs = probe(x_test_std).softmax(1).double()
    sk_probs = torch.from_numpy(sk.predict_proba(x_test_std.double().numpy()))
    assert torch.allclose(probs, sk_probs, atol=2e-3)


def test_ties_on_validation_pick_the_larger_weight_decay():
    gen = torch.Generator().manual_seed(2)
    centres = 10 * torch.randn(3, 6, generator=gen)
    y = torch.arange(3).repeat(40)
    x = centres[y] + 0.1 * torch.randn(len(y), 6, generator=gen)
    result = linear_probe(x, y, x, y, weight_decays=(1e-6, 1e-2))
    assert result["val_top1"] == {1e-6: 100.0, 1e-2: 100.0}
    assert result["weight_decay"] == 1e-2 and result["top1"] == 100.0


def test_minibatch_path_for_large_problems():
    gen = torch.Generator().manual_seed(3)
    w_true = torch.randn(8, 3, generator=gen)
    x_train, y_train = _linear_rule(600, gen, w_true)
    x_test, y_test = _linear_rule(500, gen, w_true)
    result = linear_probe(x_train, y_train, x_test, y_test, weight_decays=(1e-5,),
                          full_batch_limit=0, epochs=10, batch_size=32, lr=3e-2)
    assert result["solver"] == "adam-minibatch"
    assert result["top1"] >= 90.0


def test_single_item_classes_fall_back_to_a_plain_split():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(30, 5, generator=gen)
    y = torch.cat([torch.zeros(15), torch.ones(14), torch.tensor([2.0])]).long()  # class 2: 1 item
    result = linear_probe(x, y, x, y, weight_decays=(1e-4, 1e-2))
    assert len(result["val_top1"]) == 2


@pytest.mark.parametrize(
    "train_x, train_y, test_x, match",
    [
        (torch.zeros(0, 4), torch.zeros(0), torch.randn(5, 4), "train features must be non-empty"),
        (torch.randn(6, 4), torch.zeros(6), torch.randn(5, 4), "single class"),
        (torch.randn(6, 4), torch.arange(6) % 2, torch.randn(5, 3), "feature dimensions differ"),
        (torch.randn(6, 4), torch.arange(5) % 2, torch.randn(5, 4), "train_labels has 5 entries"),
    ],
)
def test_bad_input_raises_user_error(train_x, train_y, test_x, match):
    with pytest.raises(UserError, match=match):
        linear_probe(train_x, train_y, test_x, torch.zeros(len(test_x)))
