"""``python -m ui [flags]``: the same as ``lift-ray ui [flags]``."""

import sys

from lift_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ui", *sys.argv[1:]]))
