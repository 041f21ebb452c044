"""A new model is one file + one yaml: a toy model in a package of its own, registered the
documented way (an entry point in the ``recbole_vlm4rec.models`` group), runs through
``vlm4rec run``, is listed by ``vlm4rec models``, is refused or accepted by the bench precheck
exactly like a run, and is covered by the contract suite, with no edit anywhere else."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import random_interactions, write_inter

REPO = Path(__file__).resolve().parents[1]

TOY_MODEL = '''
r"""Toy: user and item embeddings scored by dot product, trained with the BPR loss.

Reference: Rendle et al. "BPR: Bayesian Personalized Ranking from Implicit Feedback." UAI 2009.
"""
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.loss import BPRLoss
from recbole.utils import InputType

from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models.contract import ModelContract, Setting


@register_model
class Toy(GeneralRecommender):
    """A plug-in model: dot product of ID embeddings (BPR)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(settings=(
        Setting("toy_size", int, "embedding size", minimum=1),
    ))

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        size = int(config["toy_size"])
        self.users = torch.nn.Embedding(self.n_users, size)
        self.items = torch.nn.Embedding(self.n_items, size)
        self.loss = BPRLoss()

    def calculate_loss(self, interaction):
        user = self.users(interaction[self.USER_ID])
        pos = (user * self.items(interaction[self.ITEM_ID])).sum(dim=1)
        neg = (user * self.items(interaction[self.NEG_ITEM_ID])).sum(dim=1)
        return self.loss(pos, neg)

    def predict(self, interaction):
        user = self.users(interaction[self.USER_ID])
        return (user * self.items(interaction[self.ITEM_ID])).sum(dim=1)

    def full_sort_predict(self, interaction):
        return (self.users(interaction[self.USER_ID]) @ self.items.weight.T).reshape(-1)
'''


@pytest.fixture
def plugin(tmp_path: Path) -> dict[str, str]:
    """A package ``toy_models`` with ``toy.py`` + ``Toy.yaml`` and an entry point for it, plus
    a tiny dataset; returns the environment a process needs to see them."""
    package = tmp_path / "plugin" / "toy_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "toy.py").write_text(TOY_MODEL)
    (package / "Toy.yaml").write_text("toy_size: 8\nlearning_rate: 0.01\n")
    info = tmp_path / "plugin" / "toy_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[recbole_vlm4rec.models]\ntoy = toy_models.toy\n")
    write_inter(tmp_path / "datasets" / "tiny", "tiny", random_interactions(30, 40, 10))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugin"), str(REPO)]),
           "OMP_NUM_THREADS": "1", "TOY_DATA": str(tmp_path / "datasets")}
    return env


def vlm4rec(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recbole_vlm4rec.cli", *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def test_a_plugin_model_runs_is_listed_and_is_checked_like_ours(plugin, tmp_path):
    data = plugin["TOY_DATA"]
    listed = vlm4rec(["models"], plugin, tmp_path)
    assert listed.returncode == 0 and "Toy " in listed.stdout, listed.stderr
    shown = vlm4rec(["models", "Toy"], plugin, tmp_path)
    assert "toy_size" in shown.stdout and "int >= 1 [default 8]" in shown.stdout

    run = vlm4rec(["run", "--model=Toy", "--dataset=tiny", f"--data_path={data}", "--epochs=2",
                   "--show_progress=False", "--state=ERROR", "--gpu_id="], plugin, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "recall@20" in run.stdout and "Toy on tiny" in run.stdout

    refused = vlm4rec(["run", "--model=Toy", "--dataset=tiny", f"--data_path={data}",
                       "--toy_size=0"], plugin, tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("error: config key 'toy_size' (--toy_size=0) takes "
                                      "int >= 1; got 0")

    # the bench precheck accepts and refuses exactly what the run does
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "toy", "datasets": {"tiny": {}}, "seeds": [1], "isolation": "inprocess",
        "metrics": ["recall@10"], "overrides": {"data_path": data, "epochs": 1},
        "models": {"Toy": {"model": "Toy"}, "Toy (0)": {"model": "Toy", "toy_size": 0}}}))
    check = textwrap.dedent(f"""
        from recbole_vlm4rec.benchmark.grid import GridConfigError, check_cells
        from recbole_vlm4rec.benchmark.spec import load_spec
        try:
            check_cells(load_spec({str(spec)!r}).cells())
        except GridConfigError as error:
            print("\\n".join(error.problems))
    """)
    prechecked = subprocess.run([sys.executable, "-c", check], env=plugin, cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)
    assert prechecked.stdout.strip().splitlines() == [
        "Toy (0) on tiny: config key 'toy_size' (--toy_size=0) takes int >= 1; got 0"], \
        prechecked.stderr[-2000:]


def test_the_contract_suite_covers_a_plugin_model_with_no_test_edit(plugin, tmp_path):
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "Toy",
         str(REPO / "tests" / "test_model_contract.py")],
        env=plugin, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert suite.returncode == 0, suite.stdout[-3000:]
    passed = int(suite.stdout.strip().splitlines()[-1].split(" passed")[0].split()[-1])
    assert passed >= 6, suite.stdout[-1000:]  # scores, loss, seed, checkpoint, values, yaml
