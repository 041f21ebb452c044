"""report.html: structure (sections, one row per model, examples matching the run records, every
image an embedded data URI that decodes, no outside reference), breakdowns, and a real render in
headless Chromium (non-blank screenshot, no console errors, no broken image)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import random_interactions, write_inter
from recbole_vlm4rec import cli
from recbole_vlm4rec.benchmark.breakdowns import activity_buckets, cold_warm_pairs
from recbole_vlm4rec.benchmark.cell import make_record
from recbole_vlm4rec.benchmark.grid import record_path, run_grid
from recbole_vlm4rec.benchmark import plots
from recbole_vlm4rec.benchmark.html_examples import choose_examples
from recbole_vlm4rec.benchmark.plots import model_styles
from recbole_vlm4rec.benchmark.report_data import ModelSummary, Report
from recbole_vlm4rec.benchmark.spec import Cell, load_spec
from recbole_vlm4rec.formats.features import save_feature

MODELS = {"VLM4Rec": {"model": "VLM4Rec"}, "BPR": {"epochs": 2}, "Pop": {},
          "Needs vlm": {"model": "VLM4Rec", "item_feature": "vlm"},
          "Fails": {"model": "NCL"}}  # NCL's default num_clusters exceeds 30 users: fails at run
NO_IMAGE = {f"i{i}" for i in range(40) if i % 2}  # odd items: empty image column
BROKEN_IMAGE = "i4"  # an image path that does not exist
DESCRIBED = {f"i{i}" for i in range(40) if i % 3 == 0}


def _write_items(folder: Path) -> None:
    """tiny.item with titles and images (some missing), and a descriptions file for a third."""
    (folder / "images").mkdir(parents=True)
    lines = ["item_id:token\ttitle:token_seq\timage:token"]
    for i in range(40):
        token, image = f"i{i}", ""
        if token == BROKEN_IMAGE:
            image = "images/not-there.png"
        elif token not in NO_IMAGE:
            image = f"images/{token}.png"
            Image.new("RGB", (60, 90), ((37 * i) % 256, (91 * i) % 256, 160)).save(folder / image)
        lines.append(f"{token}\tMovie number {i}\t{image}")
    (folder / "tiny.item").write_text("\n".join(lines) + "\n")
    rows = [{"item_id": t, "status": "ok", "text": f"A poster in colour {t} <b>bold</b>",
             "reason": None, "detail": "", "backend": "scripted", "model": "fake-vlm",
             "prompt": "p", "prompt_version": "1", "image_sha256": None, "fields": None}
            for t in sorted(DESCRIBED)]
    (folder / "descriptions").mkdir()
    (folder / "descriptions" / "fake.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A finished 2-seed grid on a 30-user / 40-item dataset with images; returns (out, spec)."""
    tmp = tmp_path_factory.mktemp("html")
    root = tmp / "datasets"
    write_inter(root / "tiny", "tiny", random_interactions(30, 40, 10))
    rng = np.random.default_rng(1)
    save_feature(root / "tiny" / "features", "emb", rng.normal(size=(40, 8)),
                 [f"i{i}" for i in range(40)])
    _write_items(root / "tiny")
    spec = {"name": "html", "models": MODELS, "datasets": {"tiny": {}}, "seeds": [1, 2],
            "metrics": ["recall@10", "ndcg@10", "recall@20"], "reference": ["VLM4Rec"],
            "isolation": "inprocess",
            "overrides": {"data_path": str(root), "item_features": {"emb": None},
                          "default_item_feature": "emb", "state": "WARNING", "gpu_id": "",
                          "show_progress": False, "epochs": 1,
                          "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]}}}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp / "bench"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)
        spec_obj = load_spec(tmp / "spec.yaml")
        assert run_grid(spec_obj, out).counts == {"ok": 6, "skipped": 2, "failed": 2}
        assert cli.main(["report", str(out), "--example-users", "2"]) == 0
    return out, spec_obj


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids, self.imgs, self.hrefs, self.rows, self.scripts = set(), [], [], [], 0
        self.stack: list[dict] = []
        self.cards: list[dict] = []  # {"item", "hit", "user", "strip", "img"}
        self.user = self.strip = None
        self.strip_heading = self.in_row = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids.add(attrs.get("id"))
        classes = (attrs.get("class") or "").split()
        if tag == "img":
            self.imgs.append(attrs.get("src", ""))
            if self.cards:
                self.cards[-1]["img"] = True
        if attrs.get("href"):
            self.hrefs.append(attrs["href"])
        if tag == "script":
            self.scripts += 1
        if tag == "tr" and "data-model" in attrs:
            self.rows.append({"model": attrs["data-model"], "class": classes, "text": ""})
            self.in_row = True
        if "user" in classes and tag == "div":
            self.user = attrs["data-user"]
        if tag == "div" and "strip" in classes:
            self.strip = {"kind": classes[1], "heading": ""}
        if tag == "h4":
            self.strip_heading = True
        if tag == "figure" and "item" in classes:
            self.cards.append({"item": attrs["data-item"], "hit": "hit" in classes,
                               "user": self.user, "strip": self.strip["heading"], "img": False,
                               "text": ""})

    def handle_endtag(self, tag):
        self.in_row = self.in_row and tag != "tr"
        if tag == "h4":
            self.strip_heading = False

    def handle_data(self, data):
        if self.in_row:
            self.rows[-1]["text"] += data
        if self.strip_heading:
            self.strip["heading"] += data
        elif self.cards:
            self.cards[-1]["text"] += data


def _parse(out: Path) -> tuple[str, PageParser]:
    page = (out / "report.html").read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(page)
    return page, parser


def test_page_has_every_section_and_a_row_per_model(bench):
    out, spec = bench
    page, parser = _parse(out)
    for section in ("results-tiny", "plots-tiny", "examples-tiny", "data-tiny", "run"):
        assert section in parser.ids, section
    assert [r["model"] for r in parser.rows] == list(MODELS)
    rows = {r["model"]: r for r in parser.rows}
    assert "skipped" in rows["Needs vlm"]["class"] and "has no item feature 'vlm'" in \
        rows["Needs vlm"]["text"]
    assert "failed" in rows["Fails"]["class"]
    assert "Error" in rows["Fails"]["text"]
    assert "±" in rows["VLM4Rec"]["text"] and "†" in rows["BPR"]["text"]  # 2 of 2 epochs: capped
    assert "†" not in rows["Pop"]["text"]
    # each label says which model (and settings) it runs
    assert '<small class="model" title="epochs=2">BPR</small>' in page
    assert '<small class="model" title="model=VLM4Rec, item_feature=vlm">' not in page
    assert '<small class="model" title="item_feature=vlm">VLM4Rec</small>' in page
    assert parser.scripts == 0 and "http://" not in page and "https://" not in page
    # no folder of this machine (the page may be mailed): the bench folder, the dataset's, /tmp
    tmp = str(out.parent.resolve())
    assert tmp not in page and str(Path.home()) not in page and "/tmp/" not in page
    assert "from the folder <code>bench</code>" in page and "data_path: …/datasets" in page
    assert all(h.startswith("#") and h[1:] in parser.ids for h in parser.hrefs), parser.hrefs
    commit = json.loads(record_path(out, spec.cells()[0]).read_text())["result"]["environment"]
    assert commit["commit"] in page and "reference:" in page  # provenance: commit and the spec
    assert "items with a vector" in page and "40 of 40 (100.0%)" in page  # emb covers all 40
    feature_row = page.split("<td>emb</td>", 1)[1].split("</tr>", 1)[0]
    assert "<td>VLM4Rec</td>" in feature_row  # the run that read it; the file is unchanged


def test_every_image_is_an_embedded_image_that_decodes(bench):
    out, _ = bench
    _, parser = _parse(out)
    assert len(parser.imgs) > 10
    kinds = set()
    for src in parser.imgs:
        header, _, payload = src.partition(",")
        assert header in ("data:image/png;base64", "data:image/jpeg;base64"), header[:40]
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        image.load()
        kinds.add(image.format)
        assert min(image.size) > 10
    assert kinds == {"PNG", "JPEG"}  # plots and thumbnails
    assert (out / "plots" / "tiny-activity.png").is_file()


def test_examples_match_the_records_and_show_placeholders(bench):
    out, spec = bench
    _, parser = _parse(out)
    records = {c.label: json.loads(record_path(out, c).read_text()) for c in spec.cells()
               if c.seed == 1}
    users = {u["user"]: u for u in records["VLM4Rec"]["result"]["examples"]["users"]}
    shown = list(dict.fromkeys(c["user"] for c in parser.cards))
    assert len(shown) == 2 and all(u in users for u in shown)
    for user in shown:
        test = set(users[user]["test_items"])
        for label in ("VLM4Rec", "BPR", "Pop"):
            top = next(u for u in records[label]["result"]["examples"]["users"]
                       if u["user"] == user)["top_items"]
            cards = [c for c in parser.cards if c["user"] == user and c["strip"].startswith(label)]
            assert [c["item"] for c in cards] == top and len(top) == 10
            assert [c["hit"] for c in cards] == [t in test for t in top]
        train = [c["item"] for c in parser.cards if c["user"] == user
                 and c["strip"].startswith("Training items")]
        assert train == users[user]["train_items"][-8:]
    for card in parser.cards:
        assert card["img"] == (card["item"] not in NO_IMAGE | {BROKEN_IMAGE}), card
        assert ("no image" in card["text"]) == (card["item"] in NO_IMAGE)
        assert ("no description" in card["text"]) == (card["item"] not in DESCRIBED)
        assert f"Movie number {card['item'][1:]}" in card["text"]
    assert any(not c["img"] for c in parser.cards) and any(c["img"] for c in parser.cards)
    assert "<b>bold</b>" not in (out / "report.html").read_text()  # descriptions are escaped


def test_unknown_example_model_is_a_clear_error(bench, capsys):
    out, _ = bench
    assert cli.main(["report", str(out), "--example-models", "Nope"]) == 2
    assert "--example-models ['Nope'] not in the benchmark" in capsys.readouterr().err


def _summary(label: str, runs: list[tuple[int, list[float], list[int]]],
             overrides: dict | None = None, cold: bool = False) -> ModelSummary:
    summary = ModelSummary("d", label, "M")
    for seed, values, counts in runs:
        result = {"test_result": {"recall@20": float(np.mean(values))},
                  "per_user_test": {"users": [f"u{i}" for i in range(len(values))],
                                    "metrics": {"recall@20": values},
                                    "train_interactions": counts},
                  "cold_start": {"n_items": 10, "n_cold_items": 2, "targets": "cold"} if cold
                  else None}
        cell = Cell(label, "M", "d", seed, {**(overrides or {}), "seed": seed})
        summary.records.append(make_record(cell, "ok", result=result))
    return summary


def test_activity_buckets_split_users_at_tertiles():
    counts = [1, 2, 3, 10, 11, 12, 50, 60, 70]
    model = _summary("A", [(1, [0, 0, 0, .5, .5, .5, 1, 1, 1], counts),
                           (2, [0, 0, .3, .5, .5, .5, 1, 1, 1], counts)])
    buckets = activity_buckets({"A": model}, ["recall@20"])
    assert buckets.names == ["few (1-3)", "medium (4-12)", "many (13-70)"]
    assert buckets.users == [6, 6, 6]  # 3 per bucket in each of 2 seeds
    (few, few_std), (medium, _), (many, _) = buckets.values["A"]
    assert few == pytest.approx(0.05) and few_std == pytest.approx(np.std([0, 0.1], ddof=1))
    assert medium == pytest.approx(0.5) and many == pytest.approx(1.0)
    old = ModelSummary("d", "B", "M", [make_record(Cell("B", "M", "d", 1, {}), "ok", result={
        "test_result": {}, "per_user_test": {"users": ["u"], "metrics": {"recall@20": [1.0]}}})])
    assert activity_buckets({"B": old}, ["recall@20"]) is None  # no counts recorded: no plot


def test_cold_and_warm_labels_pair_by_settings():
    run = [(1, [0.2, 0.4], [3, 4])]
    summaries = {"M": _summary("M", run, {"lr": 1}),
                 "M cold": _summary("M cold", [(1, [0.0, 0.2], [3, 4])],
                                    {"lr": 1, "cold_start_items": 0.2}, cold=True),
                 "M other": _summary("M other", run, {"lr": 2})}
    pairs = cold_warm_pairs(summaries, "recall@20")
    assert [(p.label, p.cold_label) for p in pairs] == [("M", "M cold")]
    assert pairs[0].warm[0] == pytest.approx(0.3) and pairs[0].cold[0] == pytest.approx(0.1)


CHECK_IMAGES = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 60));
  console.log("IMAGE-CHECK " + JSON.stringify({total: images.length, broken}));
});</script>"""


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH: `apt-get install -y "
                    "chromium` (.ci/run installs it)")
def test_page_renders_in_headless_chromium(bench, tmp_path):
    out, _ = bench
    _, parser = _parse(out)
    page = (out / "report.html").read_text(encoding="utf-8")
    # The page has no script; a copy gets one that reports images the browser could not show.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK_IMAGES + "</body>"), encoding="utf-8")
    shot = tmp_path / "shot.png"
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
               f"--screenshot={shot}", "--window-size=1280,2600", "--enable-logging=stderr",
               "--v=0", probe.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    checks = [line for line in console if "IMAGE-CHECK" in line]
    assert len(checks) == 1 and len(console) == 1, console  # nothing but our own line
    found = json.loads(checks[0].split("IMAGE-CHECK ", 1)[1].rsplit('", source:', 1)[0])
    assert found == {"total": len(parser.imgs), "broken": []}
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2600, 1280)
    not_white = (pixels < 245).any(axis=2).mean()
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert not_white > 0.03 and colours > 200, (not_white, colours)


def test_records_without_examples_still_make_a_page(bench, tmp_path):
    out, _ = bench
    old = tmp_path / "old"
    shutil.copytree(out / "runs", old / "runs")
    shutil.copy(out / "spec.yaml", old / "spec.yaml")
    for path in (old / "runs").rglob("*.json"):  # as written before examples were recorded
        record = json.loads(path.read_text())
        if record["result"]:
            for key in ("examples", "training"):
                record["result"].pop(key)
            record["result"]["per_user_test"].pop("train_interactions")
        path.write_text(json.dumps(record))
    assert cli.main(["report", str(old)]) == 0
    page, parser = _parse(old)
    assert "No examples: no ok run recorded top-k lists" in page
    assert "No activity buckets" in page and not parser.cards
    assert [r["model"] for r in parser.rows] == list(MODELS)


def _ranked_summary(label: str, recall: float, epochs: int) -> ModelSummary:
    """One ok run with examples recorded and a trainer cap of ``epochs`` (1: nothing trained)."""
    examples = {"k": 10, "users": [{"user": "u1", "n_train": 3, "train_items": ["a"],
                                    "test_items": ["b"], "top_items": ["b", "c"]}]}
    result = {"test_result": {"recall@20": recall}, "examples": examples,
              "training": {"epochs": epochs, "epochs_run": epochs, "best_epoch": 0,
                           "capped": False}}
    return ModelSummary("d", label, "M", [make_record(Cell(label, "M", "d", 1, {"seed": 1}), "ok",
                                                      result=result)])


def test_default_examples_show_the_reference_and_the_best_trained_model():
    # the table's first four labels are content-only (one pass); the trained ones come last
    summaries = {label: _ranked_summary(label, recall, epochs) for label, recall, epochs in [
        ("Content A", 0.02, 1), ("Content B", 0.03, 1), ("Content C", 0.01, 1),
        ("Content D", 0.05, 1), ("Trained weak", 0.20, 60), ("Closed form", 0.40, 1),
        ("Trained best", 0.30, 60)]}
    choice = choose_examples(summaries, "Content A", metric="recall@20")
    assert choice.labels == ["Content A", "Trained best", "Closed form", "Trained weak"]
    assert choice.roles == {"Content A": "reference",
                            "Trained best": "best trained model by recall@20"}
    explicit = choose_examples(summaries, "Content A", ["Content B"], metric="recall@20")
    assert explicit.labels == ["Content B"] and explicit.roles == {}


def test_every_model_gets_its_own_colour_and_marker_in_the_plots(tmp_path, monkeypatch):
    labels = [f"Model {i}" for i in range(21)]  # paper.yaml's count; tab10 would repeat at 11
    styles = model_styles(labels)
    assert len({colour for colour, _ in styles.values()}) == 21
    assert len({marker for _, marker in styles.values()}) == 21
    figures = {}

    def keep(figure, path):
        figures[path.name] = figure
        return path

    monkeypatch.setattr(plots, "_save", keep)
    summaries = {label: _summary(label, [(1, [0.1 + 0.01 * i, 0.2], [3, 4]),
                                         (2, [0.1 + 0.01 * i, 0.3], [3, 4])])
                 for i, label in enumerate(labels)}
    for summary in summaries.values():
        for record in summary.records:
            record["result"]["seconds"] = {"fit": 1.0, "test": 0.5}
    report = Report(tmp_path, ["recall@20"], 0.05, {"d": summaries})
    plots.write_plots(report)
    scatter = figures["d-quality-vs-time.png"].axes[0]
    points = {container.get_label(): container.lines[0] for container in scatter.containers}
    assert set(points) == set(labels)
    assert len({(line.get_color(), line.get_marker()) for line in points.values()}) == 21
    assert len({line.get_color() for line in points.values()}) == 21
    bars = figures["d-metrics.png"].axes[0]
    colours = {container.get_label(): container.patches[0].get_facecolor()
               for container in bars.containers if container.get_label() in labels}
    assert len(colours) == 21 and len(set(colours.values())) == 21
    for label in labels:  # the same colour for a label in every plot
        assert matplotlib.colors.to_hex(colours[label]) == points[label].get_color() \
            == styles[label][0]
