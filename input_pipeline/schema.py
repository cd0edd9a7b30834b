"""The label schema of every prepared dataset: the expression order and the AU numbering.

  schema.EXPRESSIONS                 ('neutral', 'happiness', ..., 'contempt'): the index space of
                                     every `expression` field and of `expression/votes`
  schema.expression_index("fear")    4
  schema.check(metadata, where)      a prepared dataset's stored schema agrees, or a ValueError

The order is fixed here, in the pipeline, not in any prompt file: prepared records store
expression *indices*, so changing the order would relabel every example. Builders store it (with
`SCHEMA_VERSION`) in each dataset's metadata, and `input_pipeline.sources.info` checks it when a
dataset is opened. AUs are FACS numbers (AU12 = lip corner puller is 12); each dataset stores the
AU numbers of its `au` vector, in that vector's order, under `aus`.
"""

from __future__ import annotations

from typing import Any, Sequence

# Bump when the meaning of a stored label changes (an order, an index space); prepared datasets
# store it as metadata['schema_version'].
SCHEMA_VERSION = 1

EXPRESSIONS: tuple[str, ...] = (
  "neutral",
  "happiness",
  "sadness",
  "surprise",
  "fear",
  "disgust",
  "anger",
  "contempt",
)
NUM_EXPRESSIONS = len(EXPRESSIONS)

# Metadata keys the builders write for the schema.
EXPRESSIONS_KEY = "expressions"
AUS_KEY = "aus"
VERSION_KEY = "schema_version"


def expressions() -> list[str]:
  """Canonical expression order: neutral, happiness, sadness, surprise, fear, disgust, anger,
  contempt (index i = expression id i)."""
  return list(EXPRESSIONS)


def expression_index(name: str) -> int:
  """Canonical id of an expression name ('happiness' -> 1); KeyError for an unknown name."""
  if name not in EXPRESSIONS:
    raise KeyError(f"unknown expression {name!r}; known (in id order): {list(EXPRESSIONS)}")
  return EXPRESSIONS.index(name)


def metadata() -> dict[str, Any]:
  """The schema entries a builder stores in a prepared dataset's metadata (besides `aus`)."""
  return {EXPRESSIONS_KEY: expressions(), VERSION_KEY: SCHEMA_VERSION}


def check(metadata: dict[str, Any], where: str, aus: Sequence[int] | None = None) -> None:
  """Raises ValueError (naming `where`, the dataset path) if the stored schema disagrees.

  Checks the stored expression order against EXPRESSIONS (datasets prepared before the schema
  version was stored count as version 1), the schema version, and the stored AU list: FACS
  numbers without repeats and, where `aus` is given (the dataset's reader fixes them), exactly
  `aus` in that order.
  """
  version = metadata.get(VERSION_KEY, 1)
  if version != SCHEMA_VERSION:
    raise ValueError(
      f"{where}: prepared with label schema version {version!r}, this code reads version "
      f"{SCHEMA_VERSION}; prepare the dataset again (delete {where})"
    )
  if EXPRESSIONS_KEY not in metadata:
    raise ValueError(
      f"{where}: metadata has no {EXPRESSIONS_KEY!r} (the expression order its labels use); "
      f"prepare the dataset again (delete {where})"
    )
  stored = [str(e) for e in metadata[EXPRESSIONS_KEY]]
  if stored != list(EXPRESSIONS):
    raise ValueError(
      f"{where}: the dataset's expression ids follow the order {stored}, but "
      f"input_pipeline.schema.EXPRESSIONS is {list(EXPRESSIONS)}; its labels would be read as "
      f"other expressions. Prepare the dataset again (delete {where}) or restore the order"
    )
  stored_aus = list(metadata.get(AUS_KEY) or [])
  if not all(isinstance(a, int) and not isinstance(a, bool) and a > 0 for a in stored_aus):
    raise ValueError(f"{where}: metadata {AUS_KEY!r} = {stored_aus} holds a non-FACS AU number")
  numbers = [int(a) for a in stored_aus]
  if len(set(numbers)) != len(numbers):
    raise ValueError(f"{where}: metadata {AUS_KEY!r} = {numbers} repeats an AU")
  if aus is not None and numbers != [int(a) for a in aus]:
    raise ValueError(
      f"{where}: the dataset's au vector holds AUs {numbers}, but its reader defines "
      f"{[int(a) for a in aus]}; prepare the dataset again (delete {where})"
    )
