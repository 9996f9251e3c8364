import sys

from rwedit.cli import main

sys.exit(main())
