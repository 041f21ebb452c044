"""recbole-vlm4rec: VLM4Rec and multimodal baselines on RecBole's trainer and evaluator.

Importing the package arranges for the RecBole 1.2.1 compatibility shims (see ``compat.py``) to be
installed the moment ``recbole`` is imported, so any ``recbole`` import that follows works on
today's numpy / scipy / pandas / torch, and commands that never use RecBole start fast.
"""

from recbole_vlm4rec import compat

compat.apply_on_recbole_import()

__version__ = "0.1.0"
