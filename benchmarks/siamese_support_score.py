"""The first name of ``benchmarks/support_score.py`` (its result files' commands name it): the same script."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support_score import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
