"""recbole-vlm4rec: VLM4Rec and multimodal baselines on RecBole's trainer and evaluator.

Importing the package (or any submodule) changes nothing in RecBole or numpy: the run layer
applies the RecBole 1.2.1 compatibility shims (compat.py) and the evaluation speed-ups
(speedups.py) when it builds a run.
"""

__version__ = "0.1.0"
