"""The protocol ships with the package: a wheel installed outside the checkout runs from an empty
folder with the shipped configs (and says so in its results JSON)."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_runs_the_shipped_protocol_from_an_empty_folder(tmp_path):
    # nothing may point back at a checkout: no PYTHONPATH, no project home
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLM4REC_HOME")}
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-w", str(wheels), str(REPO)],
                           capture_output=True, text=True, timeout=600, env=env)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheels.glob("recbole_vlm4rec-*.whl"))
    # A venv that sees the dependencies installed for this interpreter. A venv's
    # system_site_packages would show the *base* Python's packages, which are not these when the
    # suite itself runs in a venv (as .ci/run does), so the running interpreter's site folders
    # are listed in a .pth file instead: appended after the venv's own site-packages, where the
    # wheel goes, and without running their .pth files (the checkout's editable install among
    # them), so the wheel's copy of the package is the one imported.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    own_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    outer = [p for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()]
    (Path(own_site) / "outer_site_packages.pth").write_text("\n".join(outer) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                                "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
                               capture_output=True, text=True, timeout=600, env=env)
    assert installed.returncode == 0, installed.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [str(env_dir / "bin" / "vlm4rec"), "run", "--model=Pop", "--dataset=ml-100k",
         "--show_progress=False", "--state=WARNING", "--gpu_id="],
        cwd=empty, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recall@20" in done.stdout
    result = json.loads(next((empty / "results" / "ml-100k").glob("Pop-*.json")).read_text())
    layers = {layer["role"]: layer["path"] for layer in result["config_layers"]}
    assert str(env_dir) in layers["overall"] and str(REPO) not in layers["overall"]
    assert layers["dataset"].endswith("configs/dataset/ml-100k.yaml")
    assert result["config"]["eval_history_mask"] == "train_valid"
    assert result["config"]["topk"] == [10, 20] and result["valid_metric"] == "recall@20"
