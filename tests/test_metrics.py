"""lossdsl.metrics: Hamming loss and accuracy as scikit-learn defines them (sample weights included),
and the hit counts dtp measures its indicators with."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics
import torch
from hypothesis import given
from hypothesis import strategies as st

import lossdsl
from lossdsl.metrics import accuracy, hamming_loss, sigmoid_hits, softmax_hits


def draw_weights(draw, n):
    """Positive sample weights (scikit-learn divides by their sum)."""
    return np.array(draw(st.lists(st.floats(0.05, 5.0), min_size=n, max_size=n)), dtype=np.float64)


@st.composite
def indicator_pairs(draw):
    """(y_true, y_pred) multilabel indicator matrices [N, L] of 0/1."""
    n, labels = draw(st.integers(1, 12)), draw(st.integers(1, 6))
    cells = st.lists(st.integers(0, 1), min_size=n * labels, max_size=n * labels)
    truth = np.array(draw(cells)).reshape(n, labels)
    pred = np.array(draw(cells)).reshape(n, labels)
    return truth, pred


@st.composite
def label_pairs(draw):
    """(y_true, y_pred) 1-D integer class labels [N]."""
    n, classes = draw(st.integers(1, 20)), draw(st.integers(2, 5))
    labels = st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)
    return np.array(draw(labels)), np.array(draw(labels))


def as_float(value):
    return float(value) if not isinstance(value, torch.Tensor) else value.item()


# --------------------------------------------------------------------------------------------------
# hamming_loss


@given(indicator_pairs())
def test_hamming_loss_of_indicator_matrices_equals_sklearn(pair):
    truth, pred = pair
    expected = sklearn.metrics.hamming_loss(truth, pred)
    assert as_float(hamming_loss(torch.as_tensor(truth), torch.as_tensor(pred))) == pytest.approx(expected)


@given(indicator_pairs(), st.data())
def test_hamming_loss_of_indicator_matrices_with_sample_weight_equals_sklearn(pair, data):
    truth, pred = pair
    weight = draw_weights(data.draw, len(truth))
    expected = sklearn.metrics.hamming_loss(truth, pred, sample_weight=weight)
    got = hamming_loss(torch.as_tensor(truth), torch.as_tensor(pred), sample_weight=torch.as_tensor(weight))
    assert as_float(got) == pytest.approx(expected)


@given(label_pairs())
def test_hamming_loss_of_1d_labels_equals_sklearn(pair):
    truth, pred = pair
    expected = sklearn.metrics.hamming_loss(truth, pred)
    assert as_float(hamming_loss(torch.as_tensor(truth), torch.as_tensor(pred))) == pytest.approx(expected)


@given(label_pairs(), st.data())
def test_hamming_loss_of_1d_labels_with_sample_weight_equals_sklearn(pair, data):
    truth, pred = pair
    weight = draw_weights(data.draw, len(truth))
    expected = sklearn.metrics.hamming_loss(truth, pred, sample_weight=weight)
    got = hamming_loss(torch.as_tensor(truth), torch.as_tensor(pred), sample_weight=torch.as_tensor(weight))
    assert as_float(got) == pytest.approx(expected)


def test_hamming_loss_accepts_lists_and_numpy_arrays():
    truth = [[0, 1, 1], [1, 0, 0]]
    pred = np.array([[0, 1, 0], [0, 0, 0]])
    assert as_float(hamming_loss(truth, pred, sample_weight=[1.0, 3.0])) == pytest.approx(
        sklearn.metrics.hamming_loss(np.array(truth), pred, sample_weight=[1.0, 3.0])
    )


def test_hamming_loss_returns_a_tensor_on_the_inputs_device():
    value = hamming_loss(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]))
    assert isinstance(value, torch.Tensor) and value.device == torch.device("cpu")
    assert value.item() == pytest.approx(0.5)


def test_hamming_loss_of_different_shapes_is_an_error():
    with pytest.raises(lossdsl.LossDSLError, match="shape"):
        hamming_loss(torch.zeros(3, 2), torch.zeros(3, 3))


def test_hamming_loss_with_a_sample_weight_of_the_wrong_length_is_an_error():
    with pytest.raises(lossdsl.LossDSLError, match="sample_weight"):
        hamming_loss(torch.zeros(3, 2), torch.zeros(3, 2), sample_weight=[1.0, 2.0])


# --------------------------------------------------------------------------------------------------
# accuracy


@given(label_pairs())
def test_accuracy_of_1d_labels_equals_sklearn_accuracy_score(pair):
    truth, pred = pair
    expected = sklearn.metrics.accuracy_score(truth, pred)
    assert as_float(accuracy(torch.as_tensor(truth), torch.as_tensor(pred))) == pytest.approx(expected)


@given(label_pairs(), st.data())
def test_accuracy_with_sample_weight_equals_sklearn_accuracy_score(pair, data):
    truth, pred = pair
    weight = draw_weights(data.draw, len(truth))
    expected = sklearn.metrics.accuracy_score(truth, pred, sample_weight=weight)
    got = accuracy(torch.as_tensor(truth), torch.as_tensor(pred), sample_weight=torch.as_tensor(weight))
    assert as_float(got) == pytest.approx(expected)


@given(indicator_pairs(), st.data())
def test_accuracy_of_indicator_matrices_is_sklearns_subset_accuracy(pair, data):
    truth, pred = pair
    weight = draw_weights(data.draw, len(truth))
    assert as_float(accuracy(torch.as_tensor(truth), torch.as_tensor(pred))) == pytest.approx(
        sklearn.metrics.accuracy_score(truth, pred)
    )
    got = accuracy(torch.as_tensor(truth), torch.as_tensor(pred), sample_weight=torch.as_tensor(weight))
    assert as_float(got) == pytest.approx(sklearn.metrics.accuracy_score(truth, pred, sample_weight=weight))


def test_accuracy_of_different_shapes_is_an_error():
    with pytest.raises(lossdsl.LossDSLError, match="shape"):
        accuracy(torch.zeros(4), torch.zeros(5))


# --------------------------------------------------------------------------------------------------
# the hit counts behind dtp's indicators


def test_sigmoid_hits_are_one_minus_hamming_loss_at_logit_zero():
    logits = torch.randn(7, 5)
    target = (torch.rand(7, 5) > 0.5).float()
    hits, counted = sigmoid_hits(logits, target)
    expected = 1 - sklearn.metrics.hamming_loss(target.numpy().astype(int), (logits > 0).numpy().astype(int))
    assert counted.item() == 35
    assert (hits / counted).item() == pytest.approx(expected)


def test_softmax_hits_are_the_accuracy_of_the_argmax_over_positions_not_ignored():
    logits = torch.randn(6, 4, 3)
    target = torch.randint(0, 4, (6, 3))
    target[0, :2] = 255
    hits, counted = softmax_hits(logits, target, ignore_index=255)
    keep = (target != 255).reshape(-1).numpy()
    truth = target.reshape(-1).numpy()[keep]
    pred = logits.argmax(dim=1).reshape(-1).numpy()[keep]
    assert counted.item() == keep.sum()
    assert (hits / counted).item() == pytest.approx(sklearn.metrics.accuracy_score(truth, pred))
