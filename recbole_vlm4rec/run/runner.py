"""One training/evaluation run: config -> dataset -> splits -> model -> RecBole trainer -> results.

This is RecBole's quick-start pipeline rebuilt without ``recbole.quick_start`` (see compat.py), so
every model, ours or RecBole's, goes through the same trainer, splits and full-ranking evaluator.

The protocol (config layers, feature checks, declared features built through the encode stage)
is decided by run/protocol.py before anything is loaded; the results JSON records every layer
(path + sha256).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from recbole.config import Config
from recbole.data import create_dataset as recbole_create_dataset
from recbole.utils import ModelType, get_trainer, init_logger, init_seed

from recbole_vlm4rec import compat
from recbole_vlm4rec.data.registry import DEFAULT_DATASET
from recbole_vlm4rec.formats import paths
from recbole_vlm4rec.run.cold_start import (cold_start_splits, evaluate_by_target,
                                            restrict_candidates)
from recbole_vlm4rec.run.masking import apply_eval_history_mask
from recbole_vlm4rec.run.per_user import (
    choose_example_users,
    examples_json,
    record_per_user,
    training_counts,
)
from recbole_vlm4rec.run.protocol import prepare_run
from recbole_vlm4rec.run.ranking import count_ties
from recbole_vlm4rec.run.training import ValidCurve, training_summary

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    model: str
    dataset: str
    valid_metric: str
    best_valid_score: float
    best_valid_result: dict[str, float]
    test_result: dict[str, float]
    seconds: dict[str, float]
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    result_file: str | None = None
    seed: int | None = None
    peak_memory_mb: dict[str, float] = field(default_factory=dict)
    dataset_card_sha256: str | None = None
    # {"users": [raw user tokens], "metrics": {"recall@20": [one value per user]}}: the values
    # RecBole averaged into test_result, for paired significance tests.
    per_user_test: dict[str, Any] = field(default_factory=dict)
    cold_start: dict[str, Any] | None = None  # run/cold_start.py: what the protocol moved
    config_layers: list[dict[str, str]] = field(default_factory=list)  # role, path, sha256
    features: dict[str, Any] = field(default_factory=dict)  # name -> file, sha256, coverage
    checkpoint: str | None = None  # the evaluated model (vlm4rec export --checkpoint serves it)
    # epochs (the trainer's cap), epochs_run, best_epoch, stopped_early, capped (ran every epoch
    # of a multi-epoch cap without early stopping), stopping_step, eval_step, valid_curve, and
    # undertrained: None or {"reason": "early-best" | "still-improving", "message"} (training.py)
    training: dict[str, Any] = field(default_factory=dict)
    # a few test users' top-k, training and test items (raw tokens): per_user.examples_json
    examples: dict[str, Any] | None = None
    # run/ranking.py: tie-break seed, test users with all-equal scores / a tie at the cut-off
    ranking: dict[str, Any] = field(default_factory=dict)
    # run/accounting.py: keys a shared layer gave that this model does not read
    config_accounting: dict[str, Any] = field(default_factory=dict)


def create_dataset(config: Config) -> Any:
    """Our MultimodalDataset for general models; RecBole's own dataset classes otherwise."""
    if config["MODEL_TYPE"] in (ModelType.GENERAL, ModelType.TRADITIONAL):
        from recbole_vlm4rec.data.dataset import MultimodalDataset

        return MultimodalDataset(config)
    return recbole_create_dataset(config)


class TopKError(ValueError):
    """The largest ``topk`` is more than the catalogue's items: metrics @k would be undefined."""


def check_topk(config: Any, dataset: Any) -> None:
    """TopKError naming the key when a cut-off asks for more items than the dataset has."""
    n_items = dataset.item_num - 1  # RecBole's item ids start at 1: id 0 is padding
    topk = config["topk"]
    topk = [topk] if isinstance(topk, int) else list(topk or [])
    too_large = [k for k in topk if k > n_items]
    if too_large:
        keep = [k for k in topk if k <= n_items] or [n_items]
        raise TopKError(f"topk {topk}: {too_large} ask for more items than the catalogue of "
                        f"{config['dataset']} has ({n_items}); use e.g. --topk=\"{keep}\"")


@dataclass
class BuiltRun:
    """Everything a run evaluates, built exactly as :func:`run` builds it (serving reuses it)."""

    config: Any
    dataset: Any
    train_data: Any
    valid_data: Any
    test_data: Any
    model: Any


def build_run(config: Any, model_class: type) -> BuiltRun:
    """Dataset -> cold-start protocol -> splits -> masking -> model, seeded as RecBole seeds."""
    compat.require_installed()
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    check_topk(config, data)
    logging.getLogger().info(data)
    train_data, valid_data, test_data = compat.data_preparation(
        config, data, cold_start_splits(config, data))  # the splits as is unless cold start
    apply_eval_history_mask(config, train_data, test_data)
    init_seed(config["seed"] + (config["local_rank"] or 0), config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    return BuiltRun(config, data, train_data, valid_data, test_data, model)


def log_to_file_only(logger: logging.Logger, message: str) -> str | None:
    """Write ``message`` to the logger's log files only (whatever their level), not the console;
    the path of the (first) file written, or None when the logger has no file."""
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, None, None)
    for handler in files:
        handler.handle(record)
    return files[0].baseFilename if files else None


def run(
    model: str,
    dataset: str = DEFAULT_DATASET,
    config_files: Sequence[str] = (),
    overrides: dict[str, Any] | None = None,
    write_results: bool = True,
    evaluate_test: bool = True,
) -> RunResult:
    """Train (if the model trains), pick the best epoch on validation, evaluate on test.

    ``evaluate_test=False`` (a tuning trial) stops after validation: the result has no test
    metrics, so nothing chosen from it can have seen the test split."""
    started = time.perf_counter()
    prepared = prepare_run(model, dataset, config_files, overrides)
    config = prepared.config
    init_logger(config)
    recbole_logger = logging.getLogger()
    # ~150 lines: the log file keeps them (one process's file: the others log errors only)
    log_file = log_to_file_only(recbole_logger, str(config)) if config["local_rank"] == 0 else None
    for line in prepared.differences():
        recbole_logger.info(f"differs from the protocol: {line}")
    if log_file:
        recbole_logger.info(f"full config: {log_file}")
    for layer in prepared.layers:
        recbole_logger.info(f"config layer ({layer.role}): {layer.path}")
    for note in prepared.notes:
        recbole_logger.info(note)
    for line in prepared.accounting.lines():
        recbole_logger.warning(line)

    built = build_run(config, prepared.model_class)
    data, model_instance = built.dataset, built.model
    train_data, valid_data, test_data = built.train_data, built.valid_data, built.test_data
    loaded = time.perf_counter()  # model construction counts as loading (VLM4Rec's profiles)
    recbole_logger.info(model_instance)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model_instance)
    restrict_candidates(config, data, trainer)  # cold start: rank the cold items only
    compat.trust_checkpoint_dir(config["checkpoint_dir"])
    show_progress = bool(config["show_progress"])
    curve = ValidCurve()
    try:
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=True, show_progress=show_progress, callback_fn=curve
        )
    except KeyboardInterrupt:
        # RecBole saves the best epoch as it goes: say where it is, then stop as asked.
        saved = Path(trainer.saved_model_file)
        recbole_logger.warning(
            f"interrupted; best checkpoint so far: {saved}" if saved.is_file()
            else "interrupted before the first evaluation: no checkpoint was written"
        )
        raise
    trained = time.perf_counter()
    training = training_summary(trainer, curve, str(config["valid_metric"]).lower())
    if training["undertrained"]:
        flag = training["undertrained"]
        recbole_logger.warning(f"undertrained ({flag['reason']}): {model} {flag['message']}")
    uid_field = config["USER_ID_FIELD"]
    user_tokens = data.field2id_token[uid_field]
    item_tokens = data.field2id_token[config["ITEM_ID_FIELD"]]
    watched = choose_example_users(test_data._dataset.inter_feat[uid_field].tolist(), user_tokens)
    with count_ties(trainer) as ties, \
            record_per_user(trainer, uid_field, config["topk"], watch_users=watched) as per_user:
        test_result = (trainer.evaluate(test_data, load_best_model=True,
                                        show_progress=show_progress) if evaluate_test else {})
    cold_start = getattr(data, "cold_start_summary", None)
    if evaluate_test:
        log = recbole_logger.warning if ties.users_all_equal else recbole_logger.info
        log(f"test {ties.line()}")
        by_target = evaluate_by_target(config, trainer, train_data, test_data)
        if by_target is not None:
            cold_start = {**cold_start, "test_by_target": by_target}
            for kind, part in by_target.items():
                recbole_logger.info(f"test, {kind} targets only ({part['interactions']} "
                                    f"interactions, {part['users']} users): {part['metrics']}")
    finished = time.perf_counter()
    train_counts = training_counts(train_data._dataset, uid_field, data.user_num)

    result = RunResult(
        model=model,
        dataset=dataset,
        valid_metric=str(config["valid_metric"]).lower(),
        best_valid_score=float(best_valid_score),
        best_valid_result={k: float(v) for k, v in (best_valid_result or {}).items()},
        test_result={k: float(v) for k, v in test_result.items()},
        seconds={
            "load_and_split": round(loaded - started, 3),
            "fit": round(trained - loaded, 3),  # training, with its per-epoch validation
            "test": round(finished - trained, 3),  # one full-ranking test evaluation
            "total": round(finished - started, 3),
        },
        config=_json_safe(config.final_config_dict),
        environment=_environment(),
        seed=int(config["seed"]),
        peak_memory_mb=_peak_memory_mb(),
        dataset_card_sha256=dataset_card_checksum(config),
        per_user_test=(per_user.to_json(user_tokens, train_counts=train_counts)
                       if evaluate_test else {}),
        cold_start=cold_start,
        config_layers=[layer.to_json() for layer in prepared.layers],
        features={name: feature_record(data.item_feature(name)) for name in prepared.features},
        checkpoint=str(Path(trainer.saved_model_file).resolve()),
        training=training,
        examples=examples_json(per_user, train_data._dataset, config, user_tokens, item_tokens)
        if evaluate_test and per_user.ranked else None,
        ranking=ties.to_json(seed=int(config["seed"])) if evaluate_test else {},
        config_accounting=prepared.accounting.to_json(),
    )
    if write_results:
        result.result_file = str(write_result(result, Path(config["results_dir"])))
    return result


def write_result(result: RunResult, results_dir: Path) -> Path:
    """``<results_dir>/<dataset>/<model>-<timestamp>.json``; written atomically."""
    folder = results_dir / result.dataset
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = folder / f"{result.model}-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2, sort_keys=True))
    tmp.replace(path)
    return path.resolve()


def format_metrics_table(result: RunResult) -> str:
    """Metrics as rows, best-valid and test as columns (under the mixed cold-start protocol also
    test over warm and over cold targets); a line naming an undertrained run's flag."""
    names = list(result.test_result) or list(result.best_valid_result)
    width = max([len(n) for n in names] + [len("metric")])
    by_target = (result.cold_start or {}).get("test_by_target") or {}
    extra = {f"test {kind}": part["metrics"] for kind, part in by_target.items()}
    heads = ["valid", "test", *extra]
    widths = [max(8, len(head)) for head in heads]
    lines = [
        f"{result.model} on {result.dataset} (best epoch chosen by {result.valid_metric})",
        f"{'metric':<{width}}" + "".join(f"  {h:>{w}}" for h, w in zip(heads, widths)),
        "-" * width + "".join(f"  {'-' * w}" for w in widths),
    ]
    for name in names:
        values = [result.best_valid_result.get(name), result.test_result.get(name),
                  *(metrics.get(name) for metrics in extra.values())]
        lines.append(f"{name:<{width}}" + "".join(f"  {_fmt(v):>{w}}"
                                                  for v, w in zip(values, widths)))
    if by_target:
        lines.append("test warm / cold: the same ranking, targets = test items with / without "
                     "training interactions (" + ", ".join(
                         f"{kind} {part['users']} users" for kind, part in by_target.items()) + ")")
    flag = (result.training or {}).get("undertrained")
    if flag:
        lines.append(f"UNDERTRAINED ({flag['reason']}): {flag['message']}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _json_safe(config: dict[str, Any]) -> dict[str, Any]:
    safe = {}
    for key, value in config.items():
        try:
            json.dumps(value)
            safe[key] = value
        except TypeError:
            safe[key] = str(value)
    return safe


def feature_record(feature: Any) -> dict[str, Any]:
    """What a results JSON says about a feature a model read: its files and the file it was
    encoded from (descriptions JSONL, item table), each with its sha256, and its coverage."""
    path = Path(feature.path) if feature.path else None
    source = str(feature.meta.get("source") or "")
    # an image feature names its column: "<item file>:image"
    source_path = Path(source.rsplit(":", 1)[0] if source.endswith(":image") else source)
    tokens = path.with_suffix(".tokens") if path else None
    return {
        "path": str(path) if path else None,
        "sha256": file_sha256(path),
        "tokens_sha256": file_sha256(tokens),
        "source": source or None,
        "source_sha256": file_sha256(source_path) if source else None,
        "items_covered": feature.n_covered, "items": feature.n_items,
        "coverage": round(feature.n_covered / max(feature.n_items, 1), 6), "dim": feature.dim,
        "origin": feature.meta.get("origin"),
    }


def file_sha256(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_card_checksum(config: Config) -> str | None:
    """sha256 of ``card.json`` beside the dataset's files (or under dataset/<name>/), if any."""
    name = config["dataset"]
    for folder in (Path(config["data_path"]), paths.dataset_root() / name):
        card = folder / "card.json"
        if card.is_file():
            return hashlib.sha256(card.read_bytes()).hexdigest()
    return None


def _peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (Linux reports KiB) and, on CUDA, peak allocated."""
    peak = {"rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["cuda"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def _environment() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {"python": sys.version.split()[0], "platform": platform.platform(),
                "commit": _source_commit(), "machine": _machine()}
    for package in ("recbole", "torch", "numpy", "scipy", "pandas", "sentence-transformers",
                    "transformers", "faiss-cpu"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _source_commit() -> str:
    """The git commit of this package's checkout (``+dirty`` with local changes), or 'unknown'."""
    checkout = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "") if head else "unknown"


def _machine() -> str:
    """CPU model and count, memory, and the CUDA device when one is used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    parts = [f"{cpu} x{os.cpu_count()}"]
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        parts.append(f"{pages / 2**30:.0f} GiB RAM")
    except (ValueError, OSError, AttributeError):
        pass
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        parts.append(torch.cuda.get_device_name(0))
    return ", ".join(parts)
