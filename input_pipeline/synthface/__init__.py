"""SynthFace: the embedded procedural facial-behavior dataset (NumPy + Pillow only).

``generate(out_dir, seed=…)`` writes a BP4D-like tree (subjects F0xx/M0xx, tasks T1–T8, AU_OCC /
AU_INT CSVs) and a RAF-DB-like tree (other identities, 7 expressions) that the real readers read;
``python -m input_pipeline.synthface --out DIR`` does the same from the shell and
``python -m input_pipeline.synthface.gallery --out PNG`` draws a contact sheet.
"""

from input_pipeline.synthface.population import ACTIVITY_MIX, RAF_LABELS, TASKS
from input_pipeline.synthface.render import AU_INDEX, AU_REGIONS, AUS, Identity, Nuisance
from input_pipeline.synthface.render import NO_NUISANCE, render_face, sample_identity
from input_pipeline.synthface.writer import INT_AUS, VERSION, generate

__all__ = [
  "ACTIVITY_MIX",
  "AU_INDEX",
  "AU_REGIONS",
  "AUS",
  "INT_AUS",
  "Identity",
  "NO_NUISANCE",
  "Nuisance",
  "RAF_LABELS",
  "TASKS",
  "VERSION",
  "generate",
  "render_face",
  "sample_identity",
]
