"""``vlm4rec prepare``: turn user data into a dataset folder RecBole and this project load.

Sources (one module each): ``mmrec`` (an MMRec data folder), ``amazon`` (Amazon 2014 review and
metadata dumps), ``catalogue`` (any interactions table + items table + images folder, incl. the
``ml-100k-posters`` shortcut). Each reads its files with ``readers.py``, checks every value with
``values.py`` (refused values counted on the card), and builds a ``PreparedDataset``
(``prepared.py``); ``output.write_dataset`` writes it atomically with its card (``card.py``). The
output, ``dataset/<name>/``:

``<name>.inter`` or ``<name>.train.inter`` / ``.valid.inter`` / ``.test.inter``
    RecBole atomic interactions, tab separated: ``user_id:token item_id:token`` and, when the
    source has them, ``rating:float timestamp:float``. The three files form a predefined split
    (RecBole's ``benchmark_filename: [train, valid, test]``).
``<name>.item``
    RecBole atomic item metadata: ``item_id:token``, sanitised text columns (no tabs/newlines;
    ``token_seq``; ``price:float``) and ``image:token``: a path relative to ``dataset/<name>/``, an
    absolute path, an http(s) URL, or empty when the item has no image. Read it with
    ``recbole_vlm4rec.formats.items.read_atomic_item_file``. The dataset yamls load only the
    interaction columns (``load_col``), so this text is never joined into training batches.
``features/<feature>.npy|.tokens|.json``
    imported item features in the format of ``recbole_vlm4rec/formats/features.py`` (``visual``: raw
    CNN features, ``text``: item-text embeddings). Other files under ``features/`` (e.g. ``vlm``
    written by the grounding stage) and ``images/`` survive a re-prepare.
``card.json`` / ``CARD.md``
    the dataset card (``card.py``): counts, split sizes, feature coverage, sources with sha256,
    counted drops/fixes, the exact command.
"""
