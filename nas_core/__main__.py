"""``python -m nas_core {download,search,genotype,train,test}``; see nas_core.cli."""

import sys

from nas_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
