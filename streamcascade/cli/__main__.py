"""`python -m streamcascade.cli`, as the `streamcascade` command."""

import sys

from streamcascade.cli import main

sys.exit(main())
