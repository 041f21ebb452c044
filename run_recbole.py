#!/usr/bin/env python
"""Train and evaluate one model on one dataset through RecBole's trainer and full-ranking evaluator.

RecBole-style entry point; the installed ``vlm4rec run`` takes the same flags from any folder.
``python run_recbole.py --help`` lists them.
"""

import sys

from recbole_vlm4rec.run.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="run_recbole.py"))
