"""Mistakes a new user makes get one clear answer: missing features listed with the command that
makes them, features usable without editing a yaml, did-you-mean without repeats, grounding a
dataset without images refused with the real reason, prepare's "next:" lines that run."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import random_interactions, write_inter
from recbole_vlm4rec import cli
from recbole_vlm4rec.formats.features import save_feature


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project home with dataset 'tiny': interactions, an item table with titles and images
    (half of the items), feature 'emb' declared and present, 'vlm' and 'visual' declared and
    missing, 'extra' present but not declared."""
    monkeypatch.setenv("VLM4REC_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "dataset" / "tiny"
    write_inter(folder, "tiny", random_interactions(30, 40, 10))
    (folder / "img").mkdir()
    lines = ["item_id:token\ttitle:token_seq\timage:token"]
    for n in range(40):
        image = ""
        if n % 2:
            image = f"img/i{n}.jpg"
            (folder / image).write_bytes(b"\xff\xd8\xff not decoded by these tests")
        lines.append(f"i{n}\tTitle {n}\t{image}")
    (folder / "tiny.item").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    tokens = [f"i{n}" for n in range(40)]
    save_feature(folder / "features", "emb", rng.normal(size=(40, 8)), tokens)
    save_feature(folder / "features", "extra", rng.normal(size=(40, 4)), tokens)
    (folder / "tiny.yaml").write_text(yaml.safe_dump({
        "item_features": {"emb": None, "vlm": None, "visual": None},
        "default_item_feature": "emb"}))
    return tmp_path


RUN_SETTINGS = ["--epochs=1", "--state=WARNING", "--show_progress=False", "--gpu_id="]


def test_features_lists_present_and_missing_with_the_command_that_makes_each(home, capsys):
    (home / "dataset/tiny/features/broken.npy").write_bytes(b"not an array")
    (home / "dataset/tiny/features/broken.tokens").write_text("i1\n")
    assert cli.main(["features", "tiny"]) == 1  # something is missing: not a traceback
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("  ")}
    assert set(lines) == {"emb", "vlm", "visual", "extra", "broken"}
    assert re.search(r"emb\s+present\s+\(declared\) 40/40 items, 8-d", lines["emb"])
    assert "present  (found in the features folder)" in lines["extra"]
    assert "UNREADABLE" in lines["broken"] and "broken.npy" in lines["broken"]
    assert "missing" in lines["visual"]
    assert "`vlm4rec encode tiny --modality image`" in lines["visual"]
    assert "`vlm4rec ground tiny --backend tagger --only-with-image`" in lines["vlm"]
    assert "`vlm4rec encode tiny --descriptions tagger-preference`" in lines["vlm"]
    (home / "dataset/tiny/features/broken.npy").unlink()
    save_feature(home / "dataset/tiny/features", "vlm", np.ones((2, 3)), ["i1", "i3"])
    save_feature(home / "dataset/tiny/features", "visual", np.ones((1, 3)), ["i1"])
    assert cli.main(["features", "tiny"]) == 0
    assert "missing" not in capsys.readouterr().out
    assert cli.main(["features", "tinny"]) == 2
    assert "Did you mean tiny?" in capsys.readouterr().err


def test_a_feature_file_is_usable_at_once_without_declaring_it(home, capsys):
    assert cli.main(["run", "--model=VLM4Rec", "--dataset=tiny", "--item_feature=extra",
                     *RUN_SETTINGS]) == 0
    assert "VLM4Rec on tiny" in capsys.readouterr().out
    assert cli.main(["run", "--model=VLM4Rec", "--dataset=tiny", "--item_feature=clip",
                     *RUN_SETTINGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no item feature 'clip'" in err
    assert "it has: emb, extra, visual, vlm" in err and "--feature clip" in err
    assert cli.main(["run", "--model=VLM4Rec", "--dataset=tiny", "--item_feature=visual",
                     *RUN_SETTINGS]) == 2  # declared, no file yet: says how to make it
    err = capsys.readouterr().err
    assert "file not found" in err and "Make it: `vlm4rec encode tiny --modality image`" in err


def test_encode_then_run_with_the_new_feature_name(home, monkeypatch, capsys):
    from test_encoding import HashingEncoder

    from recbole_vlm4rec.encoding import encode

    monkeypatch.setattr(encode, "TextEncoder", HashingEncoder)
    assert cli.main(["encode", "tiny", "--template", "{title}", "--feature", "titles",
                     "--quiet"]) == 0
    assert cli.main(["run", "--model=VLM4Rec", "--dataset=tiny", "--item_feature=titles",
                     *RUN_SETTINGS]) == 0
    assert cli.main(["run", "--model=VBPR", "--dataset=tiny", "--content_features=[emb,titles]",
                     *RUN_SETTINGS]) == 0


def test_did_you_mean_names_each_dataset_once(home):
    from recbole_vlm4rec.data.registry import UnknownDatasetError, check_dataset

    with pytest.raises(UnknownDatasetError) as error:
        check_dataset("ml-100")  # ml-100k is both available (embedded) and named
    hint = re.search(r"Did you mean ([^?]*)\?", str(error.value)).group(1)
    assert hint.split(", ").count("ml-100k") == 1


@pytest.mark.parametrize("argv, message", [
    (["ground", "tinyy"], "unknown dataset 'tinyy'"),
    (["ground", "tinyy"], "Did you mean tiny?"),
    (["ground", "ml-100k"], "dataset 'ml-100k' has no item images"),
    (["ground", "ml-100k"], "ml-100k-posters"),
    (["ground", "amazon-baby"], "not prepared"),
])
def test_ground_says_the_real_reason(home, capsys, argv, message):
    assert cli.main(argv + ["--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") <= 3


def test_ground_refuses_a_dataset_whose_items_have_no_image(home, capsys):
    folder = home / "dataset" / "plain"
    write_inter(folder, "plain", random_interactions(5, 5, 2))
    (folder / "plain.item").write_text("item_id:token\ttitle:token_seq\ni0\tA\n")
    assert cli.main(["ground", "plain", "--dry-run"]) == 2
    assert "has no 'image' column" in capsys.readouterr().err
    (folder / "plain.item").write_text("item_id:token\timage:token\ni0\t\ni1\t\n")
    assert cli.main(["ground", "plain", "--dry-run"]) == 2
    assert "is empty for all 2 items" in capsys.readouterr().err
    assert cli.main(["datasets"]) == 0
    listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "[no item images]" in listing["plain"] and "[20 items with an image]" in listing["tiny"]


def test_only_with_image_takes_the_first_n_items_that_have_one(home, capsys):
    assert cli.main(["ground", "tiny", "--limit", "3", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "3 items: 1 to describe" in err and "2 without a usable image" in err  # i0, i2
    assert cli.main(["ground", "tiny", "--limit", "3", "--only-with-image", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "20 of 40 items have a local image file" in err
    assert "3 items: 3 to describe" in err
    assert [line.split()[2] for line in err.splitlines() if line.startswith("--- item")] == [
        "i1", "i3", "i5"]


def _next_lines(out: str) -> list[str]:
    return [line[len("next: "):] for line in out.splitlines() if line.startswith("next: ")]


# the models whose suggested runs the tests run (every suggestion is checked to parse)
RUN_CHECKED = ("LightGCN", "VLM4Rec", "VBPR")


def _check_next_lines(lines: list[str], capsys) -> list[str]:
    """Runs every suggested command (vlm4rec models/features), then the `vlm4rec run` lines
    `vlm4rec models --dataset` prints for RUN_CHECKED, and parses every suggested encode /
    ground command with the real parser; returns the models run."""
    ran = []
    for line in lines:
        if line.startswith("vlm4rec "):
            argv = shlex.split(line)[1:]
            capsys.readouterr()
            assert cli.main(argv) in (0, 1), (line, capsys.readouterr().err)
            if argv[0] != "models":
                continue
            for suggested in capsys.readouterr().out.splitlines():
                if not suggested.strip().startswith("vlm4rec run "):
                    continue
                run_argv = shlex.split(suggested.strip())[1:]
                model = run_argv[1].split("=")[1]
                if model in RUN_CHECKED:
                    assert cli.main(run_argv + RUN_SETTINGS) == 0, (suggested,
                                                                   capsys.readouterr().err)
                    ran.append(model)
            continue
        for command in re.findall(r"`(vlm4rec [^`]*)`", line):
            cli.build_parser().parse_args(shlex.split(command)[1:])
    return ran


def test_mmrec_import_runs_vbpr_and_freedom_on_its_features_with_no_flags(home, capsys):
    from test_prepare_mmrec import write_mmrec_folder

    write_mmrec_folder(home / "mmrec", n_users=30, n_items=20)
    assert cli.main(["prepare", "mmrec", str(home / "mmrec"), "--name", "shop"]) == 0
    out = capsys.readouterr().out
    config = yaml.safe_load((home / "dataset/shop/shop.yaml").read_text())
    assert config["default_item_feature"] == "visual"  # never the not-yet-made vlm
    assert config["content_features"] == ["visual", "text"]
    assert _check_next_lines(_next_lines(out), capsys) == ["LightGCN", "VBPR", "VLM4Rec"]
    for model in ("FREEDOM", "MMGCN", "VLM4RecFusion"):
        assert cli.main(["run", f"--model={model}", "--dataset=shop", *RUN_SETTINGS]) == 0
    assert any(line.startswith("vlm (missing): needs item images") and "URLs" in line
               for line in _next_lines(out))


def test_named_amazon_import_runs_vbpr_on_mmrec_features_with_no_flags(home, capsys):
    from test_prepare_mmrec import write_mmrec_folder

    write_mmrec_folder(home / "mmrec", n_users=30, n_items=20)
    assert cli.main(["prepare", "mmrec", str(home / "mmrec"), "--name", "amazon-baby"]) == 0
    lines = _next_lines(capsys.readouterr().out)
    # VLM4Rec's default on amazon-baby is the paper's `vlm`, not made yet: not suggested
    assert _check_next_lines(lines, capsys) == ["LightGCN", "VBPR"]
    assert cli.main(["run", "--model=FREEDOM", "--dataset=amazon-baby", *RUN_SETTINGS]) == 0


def test_catalogue_without_features_declares_text_from_its_item_table(home, capsys, monkeypatch):
    from test_encoding import HashingEncoder

    from recbole_vlm4rec.encoding import encode

    monkeypatch.setattr(encode, "TextEncoder", HashingEncoder)
    rows = random_interactions(20, 30, 5)  # more items than the largest top-k (20)
    (home / "ratings.csv").write_text("user,item,rating,time\n" + "".join(
        f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    (home / "items.csv").write_text("item,title,genre\n" + "".join(
        f"i{n},Film {n},drama\n" for n in range(30)))
    argv = ["prepare", "catalogue", "--interactions", str(home / "ratings.csv"), "--items",
            str(home / "items.csv"), "--name", "films", "--root", str(home / "elsewhere")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    config = yaml.safe_load((home / "elsewhere/films/films.yaml").read_text())
    assert config["item_features"]["text"] == {"build": "item_text",
                                               "template": "{title}. {genre}."}
    assert config["default_item_feature"] == "text" and "content_features" not in config
    lines = _next_lines(out)
    assert all("--data-path" in line for line in lines if line.startswith("vlm4rec "))
    assert _check_next_lines(lines, capsys) == ["LightGCN", "VBPR", "VLM4Rec"]


def test_recommend_names_items_by_title_and_times_load_and_query_apart(home, monkeypatch,
                                                                        capsys):
    from test_encoding import HashingEncoder

    from recbole_vlm4rec.encoding import encode, text

    class LoadableHashingEncoder(HashingEncoder):
        dim = 8

    monkeypatch.setattr(encode, "TextEncoder", LoadableHashingEncoder)
    monkeypatch.setattr(text, "TextEncoder", LoadableHashingEncoder)
    assert cli.main(["encode", "tiny", "--template", "{title}", "--feature", "titles",
                     "--encoder", "hashing", "--quiet"]) == 0
    bundle = str(home / "bundle")
    assert cli.main(["export", "tiny", "--feature", "titles", "--out", bundle,
                     "--state=WARNING", "--gpu_id="]) == 0
    capsys.readouterr()
    assert cli.main(["recommend", bundle, "--items", "i1,i2", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.search(r"query \d+\.\d ms, load \d+ ms\)$", out[0])
    first = re.match(r"\s+1\. (i\d+)  Title (\d+)  ", out[1])
    assert first and first.group(1) == f"i{first.group(2)}"
    assert re.match(r"\s+because you liked i([12]) Title \1 \(cos", out[2])
    assert cli.main(["recommend", bundle, "--text", "Title 7", "-k", "2", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["query"] == {"text": "Title 7"}  # the text itself, no repr quotes
    assert answer["load_ms"] >= 0 and answer["query_ms"] >= 0 and "ms" not in answer
    top = answer["recommendations"][0]
    assert top["item"] == "i7" and top["title"] == "Title 7"
    assert cli.main(["recommend", bundle, "--user", "u0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query"] == {"user": "u0"}
