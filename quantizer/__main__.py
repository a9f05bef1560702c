"""`python -m quantizer` = `babai-quantize`."""
import sys

from quantizer.cli import main

sys.exit(main())
