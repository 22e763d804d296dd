import sys

from lensperf.cli import main

sys.exit(main())
