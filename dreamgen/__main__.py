"""`python -m dreamgen`: the `dreamgen` command."""
from dreamgen.cli import main

main()
