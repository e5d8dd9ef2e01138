"""Import of the 2019 logs and alpha files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from nas_core.genotypes import derive_genotype, get_genotype
from nas_core.legacy import (
    LegacyFormatError,
    read_alpha_npy,
    read_eval_log,
    read_search_log,
)

GRAPHENE_SEARCH = "logs/search-GRAPHENE-20191014-131026"
MNIST_SEARCH = "logs/search-MNIST-20191004-160833/log.txt"
MNIST_EVAL = "logs/eval-MNIST-20191005-150239"
GRAPHENE_EVAL = "logs/eval-GRAPHENE-20191011-092207"


@pytest.fixture(scope="module")
def graphene_search(darts_fixtures: Path):
    return read_search_log(darts_fixtures / GRAPHENE_SEARCH / "log.txt")


def test_graphene_search_log(graphene_search):
    log = graphene_search
    assert sorted(log.genotypes) == list(range(50))
    assert sorted(log.metrics) == list(range(50))
    assert log.args["dataset"] == "graphene" and log.args["layers"] == 8
    assert log.args["unrolled"] is True and log.args["arch_learning_rate"] == 0.0003
    assert log.param_size_mb == pytest.approx(1.927441)
    # the fork's "(R^2 for regression)" lines, and step losses (validation steps say "train")
    assert log.metrics[0] == {"lr": 0.025, "train_acc": 0.202139, "train_loss": 0.01878823,
                              "valid_acc": 0.569039, "valid_loss": 0.009377418}
    assert log.metrics[49]["valid_acc"] == 0.890252
    assert log.metrics[49]["lr"] == pytest.approx(1.023679e-3)
    assert log.genotypes[0].normal[:2] == (("avg_pool_3x3", 0), ("max_pool_3x3", 1))
    assert log.final_genotype == log.genotypes[49]


def test_graphene_alpha_dumps(graphene_search, darts_fixtures: Path):
    alphas = graphene_search.alphas
    assert sorted(alphas) == list(range(50))
    a0 = alphas[0]["normal"]
    assert a0.shape == (14, 8) and a0.dtype == np.float32
    np.testing.assert_allclose(a0[0], [0.1250, 0.1249, 0.1252, 0.1251, 0.1250, 0.1250, 0.1249,
                                       0.1249])
    np.testing.assert_allclose(alphas[0]["normal"].sum(axis=1), 1.0, atol=1e-3)
    # the dump (4 decimals) is the .npy array saved at the start of epoch 49, rounded
    normal, reduce = read_alpha_npy(darts_fixtures / GRAPHENE_SEARCH, 49)
    np.testing.assert_allclose(alphas[49]["normal"], normal, atol=5.1e-5)
    np.testing.assert_allclose(alphas[49]["reduce"], reduce, atol=5.1e-5)


def test_read_alpha_npy(darts_fixtures: Path):
    normal, reduce = read_alpha_npy(darts_fixtures / GRAPHENE_SEARCH, 49)
    assert normal.shape == reduce.shape == (14, 8)
    np.testing.assert_allclose(normal.sum(axis=1), 1.0, rtol=1e-5)
    assert derive_genotype(normal, reduce) == read_search_log(
        darts_fixtures / GRAPHENE_SEARCH / "log.txt").genotypes[49]


def test_read_alpha_npy_errors(tmp_path: Path):
    with pytest.raises(LegacyFormatError, match=r"normal_007\.npy: no such file"):
        read_alpha_npy(tmp_path, 7)
    np.save(tmp_path / "normal_001.npy", np.zeros((14, 8), dtype=np.float32))
    np.save(tmp_path / "reduce_001.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LegacyFormatError, match=r"reduce_001\.npy: not a plain \.npy array"):
        read_alpha_npy(tmp_path, 1)
    np.save(tmp_path / "reduce_001.npy", np.zeros((14, 7), dtype=np.float32))
    with pytest.raises(LegacyFormatError, match=r"normal shape \(14, 8\) != reduce shape \(14, 7\)"):
        read_alpha_npy(tmp_path, 1)


def test_mnist_search_log(darts_fixtures: Path):
    log = read_search_log(darts_fixtures / MNIST_SEARCH)
    assert len(log.genotypes) == 50 and log.alphas == {}
    assert log.final_genotype == get_genotype("MNIST")
    assert log.metrics[0]["train_acc"] == 87.02
    assert log.metrics[49] == {"lr": 1.023679e-3, "train_acc": 99.956667,
                               "train_loss": 2.429235e-3, "valid_acc": 99.073333,
                               "valid_loss": 3.866315e-2}


def test_eval_logs(darts_fixtures: Path):
    mnist = read_eval_log(darts_fixtures / MNIST_EVAL / "log.txt")
    assert sorted(mnist.metrics) == list(range(600))
    assert mnist.args["arch"] == "MNIST" and mnist.args["auxiliary"] is False
    assert mnist.param_size_mb == pytest.approx(3.279358)
    assert mnist.metrics[599]["valid_acc"] == 99.279998
    assert mnist.metrics[0]["lr"] == 0.025
    graphene = read_eval_log(darts_fixtures / GRAPHENE_EVAL / "log.txt")
    assert sorted(graphene.metrics) == list(range(200))
    assert graphene.metrics[199]["valid_acc"] == 0.922547
    assert graphene.test_acc is None


def test_test_outputs(darts_fixtures: Path):
    graphene = read_eval_log(darts_fixtures / GRAPHENE_EVAL / "test.txt")
    assert graphene.test_acc == 0.908478
    assert graphene.args["layers"] == 8 and graphene.param_size_mb == pytest.approx(0.780949)
    mnist = read_eval_log(darts_fixtures / MNIST_EVAL / "test.txt")
    assert mnist.test_acc == 99.279998 and mnist.metrics == {}


def _write(tmp_path: Path, *lines: str) -> Path:
    p = tmp_path / "log.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


TS = "2019-10-04 16:08:33,803 "


def test_malformed_logs_name_file_and_line(tmp_path: Path):
    p = _write(tmp_path, TS + "epoch 0 lr 2.5e-02",
               TS + "genotype = Genotype(normal=__import__('os'), normal_concat=[2], reduce=[], "
                    "reduce_concat=[2])")
    with pytest.raises(LegacyFormatError, match=re.escape(f"{p}:2: legacy genotype: call not allowed")):
        read_search_log(p)
    p = _write(tmp_path, TS + "args = Namespace(a=1, b=open('x'))")
    with pytest.raises(LegacyFormatError, match=re.escape(f"{p}:1: args: value of 'b' is not a literal")):
        read_search_log(p)
    p = _write(tmp_path, TS + "train_acc 12.5")
    with pytest.raises(LegacyFormatError, match=re.escape(f"{p}:1: train_acc logged before any")):
        read_eval_log(p)
    p = _write(tmp_path, TS + "epoch 0 lr 0.1", TS, "alphas_normal = Variable containing:",
               " 0.5  0.5", " 0.5", "[torch.FloatTensor of size 2x2]")
    with pytest.raises(LegacyFormatError, match=re.escape(f"{p}:2: alphas: rows do not match size 2x2")):
        read_search_log(p)
    p = _write(tmp_path, TS + "epoch 0 lr 0.1", TS, "alphas_normal = Variable containing:",
               " 0.5  0.5", "[torch.FloatTensor of size 1x2]")
    with pytest.raises(LegacyFormatError, match=r"epoch 0: alphas_reduce dump missing"):
        read_search_log(p)
    with pytest.raises(LegacyFormatError, match=r"nothing\.txt: cannot read"):
        read_search_log(tmp_path / "nothing.txt")


def test_modern_tensor_alpha_dump(tmp_path: Path):
    p = _write(tmp_path, TS + "epoch 3 lr 0.1",
               TS + "alphas_normal = tensor([[0.2500, 0.7500],", "        [0.5000, 0.5000]], "
                    "device='cuda:0', grad_fn=<SoftmaxBackward0>)",
               TS + "alphas_reduce = tensor([[1., 0.], [0., 1.]])")
    log = read_search_log(p)
    np.testing.assert_array_equal(log.alphas[3]["normal"], [[0.25, 0.75], [0.5, 0.5]])
    np.testing.assert_array_equal(log.alphas[3]["reduce"], np.eye(2))


# The fork's later format (Nov 2019 on; 141 of its 168 logs): each epoch ends with
# "training loss; <metric>: <loss> <metric value>" and "validation loss; ...". Lines of the
# fork's eval-chest-xray-Run01-20191204-104236/log.txt (regression, metric 'R2'), then an
# 'accuracy' search epoch in the same format.
LATER_FORMAT = [
    "2019-12-04 10:42:36,811 gpu device = 1",
    "2019-12-04 10:42:36,811 args = Namespace(arch='CHEST_XRAY', batch_size=40, "
    "dataset='chest-xray', epochs=100, layers=8, learning_rate=0.001, primitives='Default')",
    "2019-12-04 10:42:43,839 param size = 0.239422MB",
    "2019-12-04 10:42:43,843 epoch 0 lr 1.000000e-03",
    "2019-12-04 10:42:45,742 train 000 6.914873e-01 -2.144509",
    "2019-12-04 10:46:13,827 train 850 1.784631e-01 -220.611684",
    "2019-12-04 10:46:24,318 training loss; R2: 1.781026e-01 -220.805482",
    "2019-12-04 10:46:24,469 valid 000 1.847229e-01 -281.509627",
    "2019-12-04 10:46:27,078 valid 050 1.853052e-01 -245.286425",
    "2019-12-04 10:46:29,712 validation loss; R2: 1.802908e-01 -236.524990",
    "2019-12-04 10:46:29,728 epoch 1 lr 1.000000e-03",
    "2019-12-04 10:46:30,113 train 000 2.222258e-01 -101.481810",
    "2019-12-04 10:50:05,576 training loss; R2: 1.678999e-01 -233.847903",
    "2019-12-04 10:50:10,835 validation loss; R2: 1.786077e-01 -203.048622",
]


def test_later_fork_format_keeps_the_metrics(tmp_path: Path):
    log = read_eval_log(_write(tmp_path, *LATER_FORMAT))
    assert log.args["arch"] == "CHEST_XRAY" and log.param_size_mb == pytest.approx(0.239422)
    assert log.metrics == {
        0: {"lr": 1e-3, "train_loss": 0.1781026, "train_acc": -220.805482,
            "valid_loss": 0.1802908, "valid_acc": -236.52499},
        1: {"lr": 1e-3, "train_loss": 0.1678999, "train_acc": -233.847903,
            "valid_loss": 0.1786077, "valid_acc": -203.048622},
    }
    search = _write(tmp_path, TS + "epoch 7 lr 2.5e-02",
                    TS + "genotype = " + get_genotype("CHEST_XRAY").to_legacy(),
                    TS + "training loss; accuracy: 3.046221e-01 89.520000",
                    "10/11 02:34:43 PM validation loss; accuracy: 2.500000e-01 91.250000")
    s = read_search_log(search)
    assert s.metrics[7] == {"lr": 0.025, "train_loss": 0.3046221, "train_acc": 89.52,
                            "valid_loss": 0.25, "valid_acc": 91.25}
    assert s.final_genotype == get_genotype("CHEST_XRAY")
    p = _write(tmp_path, TS + "training loss; R2: 1.0e-01 0.5")
    with pytest.raises(LegacyFormatError,
                       match=re.escape(f"{p}:1: training loss logged before any 'epoch N lr'")):
        read_eval_log(p)
