import sys

from ecgstream.cli import main

sys.exit(main())
