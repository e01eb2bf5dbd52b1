"""`python -m fastdoctor.cli`: the same as the `fastdoctor` command."""
import sys

from .main import main

sys.exit(main())
