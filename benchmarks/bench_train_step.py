"""Seconds per training step (forward + loss + backward + optimizer step) of a few models at
Amazon-Baby scale, optionally with a torch.profiler table: the quick loop for training-speed work
(``bench_models.py`` times whole epochs, ~10 min for LightGCN + LGMRec + SMORE on one thread).

    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py --models LightGCN LGMRec SMORE
    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py --models LGMRec --profile 25
    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py --products   # + the feature products

Same data and settings as ``bench_models.py`` (real Baby interactions, random 4096-d visual and
384-d text features, embedding 64, batch 2048, RecBole's trainer and optimizer). All models run in
this process, taking their steps in turn (so a change in a shared machine's load hits them
alike); after ``--warmup`` steps, the median wall and CPU seconds of a step and their ratios to
LightGCN's. ``--data-root`` keeps the written dataset between runs (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import BABY, REPO, babyscale_data, write_dataset  # noqa: E402

sys.path.insert(0, str(REPO))


def build(model_name: str, data_root: str):
    from recbole.utils import get_trainer

    from recbole_vlm4rec.models import get_model_class

    config, train, _ = babyscale_data(model_name, data_root)
    model = get_model_class(model_name)(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return model, trainer, train


def step(model, optimizer, batch) -> float:
    optimizer.zero_grad()
    loss = model.calculate_loss(batch)
    loss.backward()
    optimizer.step()
    return loss.item()


def feature_product_steps(n_items: int, hyper_num: int = 4) -> dict[str, Any]:
    """Steps made of what every training step of MMRec's LGMRec and SMORE computes over the
    whole catalogue's 4096-d visual and 384-d text features, and nothing else: a lower bound on
    their step, whatever the rest costs.

    ``products:LGMRec``: each feature times its [projection, hyperedge] map, and that map's
    gradient. ``products:SMORE``: the trainable feature tables (in 256-row blocks, as SMORE
    keeps them) through their projections, the gradients of tables and projections, and fused
    Adam's update of both.
    """
    features = [torch.randn(n_items, 4096), torch.randn(n_items, 384)]
    lgmrec_maps = [torch.zeros(f.shape[1], 64 + hyper_num, requires_grad=True) for f in features]
    tables = [[torch.nn.Parameter(block.clone()) for block in f.split(256)] for f in features]
    projections = [torch.nn.Linear(f.shape[1], 64) for f in features]
    optimizer = torch.optim.Adam([p for blocks in tables for p in blocks]
                                 + [p for layer in projections for p in layer.parameters()],
                                 lr=1e-3, fused=True)

    def lgmrec() -> None:
        sum((f @ w).sum() for f, w in zip(features, lgmrec_maps)).backward()
        for w in lgmrec_maps:
            w.grad = None

    def smore() -> None:
        optimizer.zero_grad()
        sum(torch.cat([layer(block) for block in blocks]).sum()
            for blocks, layer in zip(tables, projections)).backward()
        optimizer.step()

    return {"products:LGMRec": lgmrec, "products:SMORE": smore}


def lgmrec_floor_step(model: Any) -> Callable[[Any], None]:
    """``floor:LGMRec``: what every step of the LGMRec ``model`` computes at its size through the
    fastest building blocks here, whatever the rest costs: its feature products (as
    ``products:LGMRec``), the users' feature means and its three propagations over the user-item
    graph (the collaborative LightGCN mean and each modality's layers), and the contrast's
    log-sum-exps of the batch's distinct users over all users and of its distinct positive items
    over all items (one modality pair), each forward and backward. Left out: Gumbel softmax,
    hypergraph, BPR, normalisations and the optimizer step."""
    from recbole_vlm4rec.models._graph import (fixed_feature_product, lightgcn_mean,
                                               log_sum_exp_of_products, sparse_matmul)

    size, hyper_num = model.embedding_size, model.hyper_num
    features = [getattr(model, f"feature_{index}") for index in range(len(model.feature_names))]
    maps = [torch.zeros(f.shape[1], size + hyper_num, requires_grad=True) for f in features]
    ids = torch.randn(model.n_users + model.n_items, size, requires_grad=True)
    user_keys = torch.rand(model.n_users - 1, hyper_num, requires_grad=True)
    item_keys = torch.rand(model.n_items - 1, hyper_num, requires_grad=True)
    inverse_temperature = 1.0 / model.temperature

    def contrast(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        unit_keys = torch.nn.functional.normalize(keys)
        queries = unit_keys[(rows - 1).clamp_min(0)] * inverse_temperature
        return log_sum_exp_of_products(queries, unit_keys, inverse_temperature).sum()

    def run(batch: Any) -> None:
        loss = lightgcn_mean(model.adjacency, ids, model.n_ui_layers).sum()
        for feature, weights in zip(features, maps):
            items = fixed_feature_product(feature, weights)[:, :size]
            users = sparse_matmul(model.user_item_mean, items, model.user_item_mean_t)
            modality = torch.cat([users, items])
            for _ in range(model.n_mm_layers):
                modality = sparse_matmul(model.adjacency, modality)
            loss = loss + modality.sum()
        loss = loss + contrast(batch[model.USER_ID].unique(), user_keys)
        loss = loss + contrast(batch[model.ITEM_ID].unique(), item_keys)
        loss.backward()
        for tensor in (ids, user_keys, item_keys, *maps):
            tensor.grad = None

    return run


def time_models(names: list[str], data_root: str, steps: int, warmup: int,
                profile: int, products: bool = False) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of each step; the models take their steps in turn (step k of every
    model, then step k + 1), so a change in the machine's load hits them alike."""
    built = {name: build(name, data_root) for name in names}
    batches = {name: iter(train) for name, (_, _, train) in built.items()}
    runs = {name: (lambda batch, model=model, trainer=trainer:
                   step(model.train(), trainer.optimizer, batch))
            for name, (model, trainer, _) in built.items()}
    if products:
        for name, run in feature_product_steps(built[names[0]][0].n_items).items():
            runs[name] = lambda batch, run=run: run()
        if "LGMRec" in built:
            runs["floor:LGMRec"] = lgmrec_floor_step(built["LGMRec"][0])
            batches["floor:LGMRec"] = iter(built["LGMRec"][2])
    seconds = {name: {"wall": [], "cpu": []} for name in runs}
    order = list(runs)
    for index in range(warmup + steps):
        for name in (order if index % 2 else order[::-1]):
            batch = next(batches[name]) if name in batches else None  # drawn outside the timing
            wall, cpu = time.perf_counter(), time.process_time()
            runs[name](batch)
            if index >= warmup:
                seconds[name]["wall"].append(time.perf_counter() - wall)
                seconds[name]["cpu"].append(time.process_time() - cpu)
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        for name in names:
            model, trainer, _ = built[name]
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                step(model, trainer.optimizer, next(batches[name]))
            print(f"--- {name}: one step, by self CPU time", flush=True)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile),
                  flush=True)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["LightGCN", "LGMRec", "SMORE"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--profile", type=int, default=0,
                        help="also profile one step and print this many rows")
    parser.add_argument("--products", action="store_true",
                        help="also time products:LGMRec / products:SMORE, the feature products "
                             "every step of those models computes (a lower bound on their step), "
                             "and with LGMRec floor:LGMRec (its products, propagations and "
                             "contrast sums: what is left of its step without the glue)")
    parser.add_argument("--inter", type=Path, default=BABY)
    parser.add_argument("--data-root", type=Path,
                        help="folder for the written dataset (reused when present)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or Path(tmp)
        if not (root / "babyscale").is_dir():
            root.mkdir(parents=True, exist_ok=True)
            write_dataset(root, "babyscale", args.inter)
        results = time_models(args.models, str(root), args.steps, args.warmup, args.profile,
                              args.products)
    medians = {name: {kind: statistics.median(values) for kind, values in seconds.items()}
               for name, seconds in results.items()}
    base = medians.get("LightGCN")
    print(f"torch threads {torch.get_num_threads()}, {args.steps} timed steps after "
          f"{args.warmup} warm-up, batch 2048, models in turn; medians")
    print(f"{'model':<17}{'wall s':>9}{'/LightGCN':>11}{'CPU s':>9}{'/LightGCN':>11}")
    for name, median in medians.items():
        wall = f"{median['wall'] / base['wall']:.2f}" if base else "-"
        cpu = f"{median['cpu'] / base['cpu']:.2f}" if base else "-"
        print(f"{name:<17}{median['wall']:>9.3f}{wall:>11}{median['cpu']:>9.3f}{cpu:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
