import sys

from scalpd.cli import main

sys.exit(main())
