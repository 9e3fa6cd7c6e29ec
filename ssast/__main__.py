import sys

from ssast.cli import main

sys.exit(main())
