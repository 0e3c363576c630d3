import sys

from ctrzoo.cli import main

sys.exit(main())
