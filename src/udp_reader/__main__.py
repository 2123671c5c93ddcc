import sys

from udp_reader.cli import main

sys.exit(main())
