"""``python -m input_pipeline.synthface --out DIR --seed S …`` (see writer.main)."""

import sys

from input_pipeline.synthface import writer

if __name__ == "__main__":
  sys.exit(writer.main())
