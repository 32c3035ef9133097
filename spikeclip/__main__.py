import sys

from spikeclip.cli import main

sys.exit(main())
