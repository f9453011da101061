"""``python -m latentsync_core --video in.mp4 --audio speech.wav --out out.mp4`` (and the ``score``, ``batch``,
``prepare`` and ``train`` commands): see :mod:`.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
