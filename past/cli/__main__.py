import sys

from past.cli import main

sys.exit(main())
