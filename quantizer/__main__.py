"""`python -m quantizer` = `babai-quantize`."""
import sys

from babai_quantizer.cli import main

sys.exit(main())
