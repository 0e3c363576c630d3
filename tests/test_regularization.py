"""Regularizers: plain L2 and the DIN paper's mini-batch-aware L2, against hand sums."""

from __future__ import annotations

import torch

from ctrzoo.train.regularization import mba_l2, plain_l2


def test_plain_l2_is_lambda_times_sum_of_squares() -> None:
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([[3.0], [0.5]])
    torch.testing.assert_close(plain_l2([a, b], 0.1), torch.tensor(0.1 * (1 + 4 + 9 + 0.25)))
    torch.testing.assert_close(plain_l2([], 0.1), torch.tensor(0.0))


def _table() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(8, 3, requires_grad=True)


def test_mba_l2_is_frequency_scaled_sum_over_unique_batch_ids() -> None:
    weight = _table()
    freq = torch.tensor([0.0, 10.0, 2.0, 0.0, 4.0, 1.0, 5.0, 3.0])
    ids = torch.tensor([[2, 4, 4], [0, 2, 3]])  # 4 and 2 repeated (count once), 0 = padding, 3 never seen
    lam = 0.5
    got = mba_l2(weight, ids, freq, lam)
    w = weight.detach()
    expected = lam / 2 * w[2].pow(2).sum() + lam / 4 * w[4].pow(2).sum() + lam / 1 * w[3].pow(2).sum()
    torch.testing.assert_close(got, expected)


def test_mba_l2_gradient_touches_only_batch_rows() -> None:
    weight = _table()
    freq = torch.full((8,), 2.0)
    ids = torch.tensor([[1, 5], [5, 0]])
    mba_l2(weight, ids, freq, 1.0).backward()
    grad = weight.grad
    touched = {r for r in range(8) if torch.count_nonzero(grad[r]) > 0}
    assert touched == {1, 5}
    torch.testing.assert_close(grad[1], 2 * weight.detach()[1] / 2.0)  # d/dw (lam/n) ||w||^2 = 2 w lam / n


def test_mba_l2_accepts_several_id_tensors_and_sparse_gradients() -> None:
    weight = _table()
    freq = torch.ones(8)
    sparse_ids, seq_ids = torch.tensor([[1, 2]]), torch.tensor([[[2, 6, 0]]])
    got = mba_l2(weight, [sparse_ids, seq_ids], freq, 1.0, sparse=True)
    w = weight.detach()
    torch.testing.assert_close(got, w[[1, 2, 6]].pow(2).sum())
    got.backward()
    assert weight.grad.is_sparse
    assert sorted(weight.grad.coalesce().indices()[0].tolist()) == [1, 2, 6]  # padding row 0 left out
