"""The ``--modality lvlm`` options of ``vlm4rec encode`` and the run they start."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

EPILOG = """\
lvlm: item image + a grounding prompt -> pooled hidden states of a vision-language model
  vlm4rec encode ml-100k-posters --modality lvlm --model ~/models/Qwen2-VL-2B-Instruct \\
      --prompt structured --domain movies --pooling mean --layer -1          # -> features/lvlm.npy
  vlm4rec encode ml-100k-posters --modality lvlm --model ~/models/Qwen2-VL-2B-Instruct \\
      --prompt structured --domain movies --describe qwen-structured           # + descriptions/qwen-structured.jsonl
  vlm4rec encode amazon-baby --modality lvlm --backend openai --base-url http://gpu:8000/v1 \\
      --model <embedding model served by vLLM> --feature lvlm_vllm
"""


def add_lvlm_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "--modality lvlm (vision-language model hidden states; docs/encoding.md)")
    group.add_argument("--backend", choices=("transformers", "openai"), default="transformers",
                       help="transformers: a model folder / hub id run here; openai: an "
                       "OpenAI-compatible /v1/embeddings endpoint (vLLM)")
    group.add_argument("--model", help="model folder / hub id (transformers) or served model "
                       "name (openai)")
    group.add_argument("--prompt", default="structured",
                       help="grounding prompt name or yaml path (default structured)")
    group.add_argument("--domain", help="prompt domain (slot set), e.g. movies, fashion, baby")
    group.add_argument("--context", metavar="TEMPLATE",
                       help="catalogue text for the prompt from item columns, e.g. '{movie_title}'")
    group.add_argument("--pooling", choices=("mean", "last", "image"),
                       help="transformers: mean over the prompt's tokens (default), the last "
                       "token, or the image tokens")
    group.add_argument("--layer", type=int, help="transformers: hidden_states index, 0 = "
                       "embeddings, -1 = last layer (default)")
    group.add_argument("--describe", metavar="TAG", help="transformers: also generate the "
                       "answer in the same pass and write descriptions/<TAG>.jsonl")
    group.add_argument("--dtype", default="auto", help="transformers: auto, float32, bfloat16, "
                       "float16")
    group.add_argument("--max-new-tokens", type=int, default=256,
                       help="with --describe: longest answer in tokens")
    group.add_argument("--base-url", action="append", metavar="URL",
                       help="openai: endpoint, e.g. http://localhost:8000/v1; repeat it for several "
                       "servers (requests go to the one with the fewest in flight)")
    group.add_argument("--api-key-env", default="OPENAI_API_KEY",
                       help="openai: environment variable holding the API key")
    group.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight")
    group.add_argument("--max-retries", type=int, default=5,
                       help="openai: retries on 429/5xx/connection errors")
    group.add_argument("--max-side", type=int, default=1024,
                       help="downscale the longer image side to this (default 1024)")


def run_lvlm(args: argparse.Namespace, folder: Path, out_dir: Path, items_path: Path) -> Any:
    """``vlm4rec encode --modality lvlm``: build items, prompt and embedder, then encode."""
    from recbole_vlm4rec.encoding.lvlm import create_lvlm_embedder
    from recbole_vlm4rec.encoding.lvlm_feature import encode_lvlm_feature
    from recbole_vlm4rec.formats.items import read_item_table
    from recbole_vlm4rec.grounding.items import items_from_table
    from recbole_vlm4rec.grounding.prompts import load_prompt

    if args.descriptions or args.template:
        raise ValueError("--descriptions/--template are for text; --modality lvlm reads images "
                         "from --image-column and a grounding --prompt")
    if not args.model:
        raise ValueError("--modality lvlm needs --model: a model folder / hub id (transformers) "
                         "or the model name the endpoint serves (openai)")
    if not items_path.is_file():
        raise FileNotFoundError(f"item table {items_path} not found (prepare the dataset or pass "
                                "--items)")
    items = items_from_table(read_item_table(items_path), items_path.parent, args.item_field,
                             args.image_column, args.context, items_path)
    prompt = load_prompt(args.prompt, args.domain)
    if args.backend == "openai":
        given = [flag for flag, value in (("--pooling", args.pooling), ("--layer", args.layer),
                                          ("--describe", args.describe)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: not available with --backend openai (the "
                             "server pools; configure it there, e.g. vLLM --override-pooler-config)")
        embedder = create_lvlm_embedder(
            "openai", model=args.model, base_url=args.base_url, api_key_env=args.api_key_env,
            concurrency=args.concurrency, max_retries=args.max_retries)
    else:
        embedder = create_lvlm_embedder(
            "transformers", model=args.model, device=args.device, dtype=args.dtype,
            batch_size=args.batch_size or 4, pooling=args.pooling or "mean",
            layer=-1 if args.layer is None else args.layer, describe=bool(args.describe),
            max_new_tokens=args.max_new_tokens)
    describe_to = folder / "descriptions" / f"{args.describe}.jsonl" if args.describe else None
    meta = {"command": shlex.join(["vlm4rec", "encode", *sys.argv[2:]]),
            "item_table": str(items_path), "context": args.context}
    if args.backend == "transformers":
        meta.update(pooling=args.pooling or "mean", layer=-1 if args.layer is None else args.layer)
    try:
        return encode_lvlm_feature(
            items, prompt, embedder, out_dir, args.feature or "lvlm",
            source=f"{items_path}:{args.image_column} with prompt {prompt.name}",
            use_cache=not args.no_cache, describe_to=describe_to, max_side=args.max_side,
            show_progress=not args.quiet, extra_meta=meta)
    finally:
        embedder.close()
