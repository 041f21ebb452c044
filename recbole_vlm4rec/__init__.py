"""recbole-vlm4rec: VLM4Rec and multimodal baselines on RecBole's trainer and evaluator.

Importing the package installs the RecBole 1.2.1 compatibility shims (see ``compat.py``) so that
any ``recbole`` import that follows works on today's numpy / scipy / pandas / torch.
"""

from recbole_vlm4rec import compat

compat.apply()

__version__ = "0.1.0"
