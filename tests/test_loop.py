"""The training loop both models use (ctrzoo.train.loop): early stopping keeps the best weights, a plateau
decays the learning rate, max_steps and the thread scope hold, and the optimizers are the same for both."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctrzoo.nn import RowSparseAdam
from ctrzoo.train.loop import TrainingLoop
from ctrzoo.train.trainer import Trainer


class Toy(TrainingLoop):
    """A sparse table and a linear layer fitted to a target; validation "scores" come from a list."""

    def __init__(self, scores, steps=4, **kwargs):
        torch.manual_seed(0)
        model = nn.ModuleDict({"table": nn.Embedding(20, 3, sparse=True), "out": nn.Linear(3, 1)})
        super().__init__(model, **{"epochs": len(scores), "lr": 0.05, "patience": 2, **kwargs})
        self.scores, self.steps_per_epoch = iter(scores), steps
        self.ids = torch.arange(20).view(steps, -1)
        self.weights_after: list[torch.Tensor] = []  # the table after each epoch
        self.threads_seen: set[int] = set()

    def batches(self):
        return iter(self.ids)

    def loss(self, ids):
        self.threads_seen.add(torch.get_num_threads())
        pred = self.model["out"](self.model["table"](ids)).squeeze(-1)
        loss = ((pred - 1.0) ** 2).mean()
        return loss, loss, len(ids)

    def validate(self):
        self.weights_after.append(self.model["table"].weight.detach().clone())
        score = next(self.scores)
        return {} if score is None else {"score": score}

    def score(self, metrics):
        return metrics.get("score")

    def record(self, epoch, loss_sum, n_seen, steps, seconds, metrics):
        return {"epoch": epoch, "loss": loss_sum / n_seen, "steps": steps, "lr": self.lr}


def test_early_stopping_keeps_the_best_epoch_and_decays_the_learning_rate_on_a_plateau():
    toy = Toy([0.1, 0.3, 0.2, 0.25, 0.9], lr_decay=0.5)
    best = toy.fit()
    assert [h["epoch"] for h in toy.history] == [1, 2, 3, 4]  # two epochs without a better score: stopped
    assert best == toy.history[1] and toy.best["epoch"] == 1
    assert torch.equal(toy.model["table"].weight, toy.weights_after[1])  # epoch 2's weights, not the last
    assert not torch.equal(toy.weights_after[1], toy.weights_after[3])
    assert [h["lr"] for h in toy.history] == [0.05, 0.05, 0.05, 0.025]
    assert toy.optimizers[1].param_groups[0]["lr"] == pytest.approx(0.0125)  # both optimizers decayed twice


def test_without_a_score_every_epoch_runs_and_the_last_weights_are_kept():
    toy = Toy([None, None, None])
    best = toy.fit()
    assert best == toy.history[-1] and len(toy.history) == 3 and toy.best["state"] is None
    assert torch.equal(toy.model["table"].weight, toy.weights_after[-1])
    assert toy.history[-1]["loss"] < toy.history[0]["loss"]  # it trained


def test_max_steps_stops_inside_an_epoch():
    toy = Toy([0.1, 0.2, 0.3], max_steps=6)
    toy.fit()
    assert [h["steps"] for h in toy.history] == [4, 2] and toy.global_step == 6


def test_threads_are_the_loops_for_the_call_only():
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    toy = Toy([0.1], threads=want)
    toy.fit()
    assert toy.threads_seen == {want} and torch.get_num_threads() == before


def test_optimizers_row_sparse_adam_for_tables_unless_another_is_plugged_in():
    toy = Toy([0.1])
    assert [type(o) for o in toy.optimizers] == [torch.optim.Adam, RowSparseAdam]
    assert toy.optimizers[1].param_groups[0]["params"] == [toy.model["table"].weight]
    other = Toy([0.1], sparse_optimizer=torch.optim.SparseAdam)
    assert type(other.optimizers[1]) is torch.optim.SparseAdam
    other.fit()  # and it trains with it


def test_both_trainers_are_the_one_loop():
    from ctrzoo.retrieval.train import RetrievalTrainer

    for trainer in (Trainer, RetrievalTrainer):
        assert issubclass(trainer, TrainingLoop)
        assert "_run_epoch" not in vars(trainer) and "early_stopping" not in vars(trainer)
