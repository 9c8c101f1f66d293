import os
import sys

# contract.py is imported as a plain module by the test files
sys.path.insert(0, os.path.dirname(__file__))
