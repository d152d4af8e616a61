"""The exercise's own usage, a thin wrapper over normlab: train one model and draw its misclassified grid.

    python main.py --norm group --epochs 25
    python main.py --norm bn+l1          # batch norm with the study's L1 penalty
    python main.py --norm layer --seed 1 --out runs/ln1
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # runs from a clone without installing

from normlab.cli import exercise_main, finish

if __name__ == "__main__":
    finish(exercise_main)
