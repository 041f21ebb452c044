"""A small dataset with titles, images, a random feature and a MiniLM text feature, exported as
two bundles: what the service, explorer and browser tests serve."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from recbole_vlm4rec.formats.features import save_feature
from conftest import random_interactions, write_inter

WORDS = ["red wool scarf", "space opera with robots", "wooden toy train", "silk evening dress",
         "haunted house horror", "baby bottle warmer", "jazz piano record", "mountain bike",
         "cosy knitted jumper", "detective noir film"]


def item_title(i: int) -> str:
    return f"{WORDS[i % len(WORDS)]} {i}"


def write_explorer_dataset(root: Path, name: str = "shop") -> dict[str, Any]:
    """``root/<name>/``: 30 users x 40 items, an item table (title, image for i0..i9), features
    ``emb`` (random 8-d, no encoder) and ``text`` (MiniLM on the titles). Returns overrides."""
    from PIL import Image

    from recbole_vlm4rec.encoding.text import encoder_fingerprint
    from recbole_vlm4rec.serving.query_encoder import load_query_encoder

    folder = root / name
    write_inter(folder, name, random_interactions(30, 40, 10))
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = ["item_id:token\ttitle:token_seq\timage:token"]
    for i in range(40):
        image = ""
        if i < 10:
            colour = tuple(int(c) for c in np.random.default_rng(i).integers(0, 255, 3))
            Image.new("RGB", (60, 90), colour).save(folder / "images" / f"i{i}.png")
            image = f"images/i{i}.png"
        rows.append(f"i{i}\t{item_title(i)}\t{image}")
    (folder / f"{name}.item").write_text("\n".join(rows) + "\n")
    tokens = [f"i{i}" for i in range(40)]
    rng = np.random.default_rng(1)
    save_feature(folder / "features", "emb", rng.normal(size=(40, 8)), tokens)
    encoder = load_query_encoder("all-MiniLM-L6-v2")
    save_feature(folder / "features", "text", encoder.encode([item_title(i) for i in range(40)]),
                 tokens, {"encoder": "all-MiniLM-L6-v2", "template": "{title}",
                          "encoder_fingerprint": encoder_fingerprint("all-MiniLM-L6-v2"),
                          "item_table": str(folder / f"{name}.item")})
    return {"data_path": str(root), "show_progress": False, "state": "WARNING", "gpu_id": "",
            "item_features": {"emb": None, "text": None}, "default_item_feature": "emb",
            "checkpoint_dir": str(root.parent / "saved"),
            "results_dir": str(root.parent / "results")}


def export_explorer_bundles(tmp: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Bundles ``shop-emb`` (random feature: no text search) and ``shop-text`` (MiniLM)."""
    from recbole_vlm4rec.serving.export import export_bundle

    overrides = write_explorer_dataset(tmp / "datasets")
    folders = {}
    for feature in ("emb", "text"):
        folders[feature] = export_bundle("VLM4Rec", "shop", tmp / "bundles" / f"shop-{feature}",
                                         overrides={**overrides, "item_feature": feature})
    return folders, overrides


class LiveServer:
    """``vlm4rec serve``'s app on uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        from recbole_vlm4rec.serving.serve_cli import listen_socket

        self.sock = listen_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
