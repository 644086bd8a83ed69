#!/usr/bin/env python3
"""Entry point: `python3 run.py --help`."""
import sys

from compressor.launch import main

if __name__ == "__main__":
    sys.exit(main())
