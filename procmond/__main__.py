import sys

from procmond.cli import main

sys.exit(main())
