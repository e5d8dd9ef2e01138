"""The learning task of a dataset, in one place: classification or regression.

A :class:`Task` knows its loss, what the meters read of a network's output, its selection
metric (``top1`` in percent, or ``r2``), a resumable running :class:`Meter`, the test
metrics and the test split's per-sample prediction rows.  The stages, the report and the data
layer name a task by its registry key (``"classification"``, ``"regression"``) and ask
:func:`get_task` for the object; nothing else tests the name.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Task", "Classification", "Regression", "Meter", "get_task", "list_tasks",
           "task_of_metric"]


class Meter:
    """Running sums over an epoch, resumable (:meth:`state` / :meth:`load` are plain floats).

    Classification: mean loss and top-1 (percent).  Regression: mean loss and R^2 over every
    sample seen (``1 - SSE / SST`` with float64 sums), not an average over batches.
    """

    def __init__(self, task: "Task"):
        self.task = task
        self.sums: dict[str, float] = {"n": 0.0, "loss": 0.0, "correct": 0.0, "sy": 0.0,
                                       "syy": 0.0, "sse": 0.0}

    def update(self, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: its mean ``loss`` and the network's raw ``output``."""
        n = int(target.shape[0])
        self.sums["n"] += n
        self.sums["loss"] += float(loss) * n
        with torch.no_grad():
            self.task.accumulate(self.sums, self.task.prediction(output), target)

    def result(self) -> dict[str, float | None]:
        """``{"loss", metric}`` over the samples seen (None values when there are none)."""
        n = self.sums["n"]
        if n == 0:
            return {"loss": None, self.task.metric: None}
        return {"loss": self.sums["loss"] / n, self.task.metric: self.task.score(self.sums)}

    def state(self) -> dict[str, float]:
        return dict(self.sums)

    def load(self, state: dict[str, float]) -> "Meter":
        self.sums = {k: float(v) for k, v in state.items()}
        return self


class Task:
    """What differs between classification and regression (see the module docstring)."""

    name: str = ""
    #: the selection metric's key in metrics dicts, and its label in figures
    metric: str = ""
    metric_label: str = ""

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        """The network's output as the meters and test metrics read it (detached, float32)."""
        raise NotImplementedError

    def random_targets(self, n: int, num_outputs: int) -> torch.Tensor:
        """``n`` targets of the kind the data yields (for memory probes)."""
        raise NotImplementedError

    def accumulate(self, sums: dict[str, float], prediction: torch.Tensor,
                   target: torch.Tensor) -> None:
        raise NotImplementedError

    def score(self, sums: dict[str, float]) -> float | None:
        raise NotImplementedError

    def meter(self) -> Meter:
        return Meter(self)

    def test_metrics(self, outputs: torch.Tensor, targets: torch.Tensor,
                     class_names: list[str] | None = None) -> dict[str, Any]:
        """The test split's metrics from every output (CPU, float32) and target;
        ``class_names`` (classification) names the classes in the per-class results."""
        raise NotImplementedError

    def prediction_rows(self, outputs: torch.Tensor, targets: torch.Tensor,
                        class_names: list[str] | None = None) -> list[dict[str, Any]]:
        """One row per sample (``index``, ``target``, ``prediction``, ...) of every output
        (CPU, float32) and target, as ``test_predictions.csv`` holds them."""
        raise NotImplementedError

    def better(self, value: float | None, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (higher is better for both metrics; ties lose)."""
        return value is not None and (best is None or value > best)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Classification(Task):
    name = "classification"
    metric = "top1"
    metric_label = "top-1 accuracy (%)"

    def loss(self, output, target):
        return F.cross_entropy(output.float(), target)

    def random_targets(self, n, num_outputs):
        return torch.randint(0, num_outputs, (n,))

    def prediction(self, output):
        return output.detach().float()

    def accumulate(self, sums, prediction, target):
        sums["correct"] += float((prediction.argmax(dim=1) == target).sum())

    def score(self, sums):
        return 100.0 * sums["correct"] / sums["n"]

    def test_metrics(self, outputs, targets, class_names=None):
        """``top1``, ``top5`` (top-k with k = min(5, classes)), ``loss`` (mean cross entropy),
        ``per_class_accuracy`` (percent per class index; None for a class without samples);
        with ``class_names`` also ``per_class_accuracy_by_name`` ({name: percent or None})."""
        n = int(targets.shape[0])
        classes = outputs.shape[1]
        k = min(5, classes)
        correct = outputs.topk(k, dim=1).indices.eq(targets[:, None])
        pred = outputs.argmax(dim=1)
        per_class: list[float | None] = []
        for cls in range(classes):
            mask = targets == cls
            count = int(mask.sum())
            per_class.append(100.0 * int((pred[mask] == cls).sum()) / count if count else None)
        metrics: dict[str, Any] = {
            "top1": 100.0 * int(correct[:, 0].sum()) / n,
            "top5": 100.0 * int(correct.any(dim=1).sum()) / n,
            "loss": float(F.cross_entropy(outputs, targets, reduction="sum")) / n,
            "per_class_accuracy": per_class,
        }
        if class_names is not None:
            if len(class_names) != classes:
                raise ValueError(f"{len(class_names)} class names for {classes} outputs")
            metrics["per_class_accuracy_by_name"] = {
                str(name): acc for name, acc in zip(class_names, per_class)}
        return metrics

    def prediction_rows(self, outputs, targets, class_names=None):
        """``index``, ``target`` and ``prediction`` (class indices), ``target_name``,
        ``prediction_name`` (``class_names``, else the index as text) and ``probability``
        (the predicted class's softmax, 6 decimals)."""
        conf, pred = torch.softmax(outputs, dim=1).max(dim=1)
        names = class_names or []
        rows = []
        for i, (t, p, c) in enumerate(zip(targets.tolist(), pred.tolist(), conf.tolist())):
            t = int(t)
            rows.append({"index": i, "target": t, "prediction": int(p),
                         "target_name": names[t] if t < len(names) else str(t),
                         "prediction_name": names[p] if p < len(names) else str(p),
                         "probability": round(float(c), 6)})
        return rows


class Regression(Task):
    name = "regression"
    metric = "r2"
    metric_label = "R²"

    def loss(self, output, target):
        return F.mse_loss(output.squeeze(-1).float(), target.float())

    def random_targets(self, n, num_outputs):
        return torch.randn(n)

    def prediction(self, output):
        return output.detach().squeeze(-1).float()

    def accumulate(self, sums, prediction, target):
        p = prediction.reshape(-1).double()
        y = target.detach().reshape(-1).double()
        sums["sy"] += float(y.sum())
        sums["syy"] += float((y * y).sum())
        sums["sse"] += float(((y - p) ** 2).sum())

    def score(self, sums):
        n = sums["n"]
        sst = sums["syy"] - sums["sy"] * sums["sy"] / n
        return 1.0 - sums["sse"] / sst if sst > 0 else None

    def test_metrics(self, outputs, targets, class_names=None):
        """``r2`` over the whole split, ``mse``, ``mae``, ``loss`` (mean MSE)."""
        n = int(targets.shape[0])
        p = outputs.squeeze(-1).double()
        y = targets.double().reshape(-1)
        err = y - p
        sse = float((err ** 2).sum())
        sst = float(((y - y.mean()) ** 2).sum())
        return {
            "r2": 1.0 - sse / sst if sst > 0 else None,
            "mse": sse / n,
            "mae": float(err.abs().mean()),
            "loss": float(F.mse_loss(outputs.squeeze(-1), targets.float(), reduction="sum")) / n,
        }

    def prediction_rows(self, outputs, targets, class_names=None):
        """``index``, ``target`` and ``prediction`` (floats, in the units given)."""
        return [{"index": i, "target": float(t), "prediction": float(p)}
                for i, (t, p) in enumerate(zip(targets.reshape(-1).tolist(),
                                               outputs.reshape(-1).tolist()))]


_TASKS: dict[str, Task] = {t.name: t for t in (Classification(), Regression())}


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: "str | Task") -> Task:
    """The task registered as ``name`` (a Task is returned as is); ValueError otherwise."""
    if isinstance(name, Task):
        return name
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}") \
            from None


def task_of_metric(metric: str) -> Task:
    """The task whose selection metric is ``metric`` (``top1`` or ``r2``: history.json's
    ``"metric"``); ValueError otherwise."""
    for task in _TASKS.values():
        if task.metric == metric:
            return task
    raise ValueError(f"unknown metric {metric!r}; known metrics: "
                     f"{', '.join(t.metric for t in _TASKS.values())}")
