"""What typed inputs (Parquet, JSON Lines) must hold: the columns a schema reads, the kind of value each one
holds (a number, a list, a single value), and text values that mean missing turned into nulls.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctrzoo.data.schema import DatasetSchema, SchemaError
from ctrzoo.features.spec import Bucketized, DenseVector, MultiValue, Numeric, SequenceFeature


def column_roles(schema: DatasetSchema) -> dict[str, str]:
    """What each column the schema reads holds: ``number``, ``numbers`` (a vector), ``items`` (a bag or
    sequence) or ``value``; the types of columns read from JSON without a sample value follow it."""
    roles: dict[str, str] = {}
    for _, column in schema.column_refs():
        roles.setdefault(column, "value")
    for lab in schema.labels:
        if lab.compare or not lab.positive:
            roles[lab.column] = "number"
    if schema.weight:
        roles[schema.weight] = "number"
    for f in schema.features:
        if isinstance(f, Numeric | Bucketized) and not f.derive:
            roles[f.column] = "number"
        elif isinstance(f, DenseVector):
            roles[f.column] = "numbers"
        elif isinstance(f, MultiValue | SequenceFeature):
            roles[f.column] = "items"
    for c in schema.checks:
        if c.kind in ("integer", "number"):
            roles[c.column] = "number"
    return roles


def read_columns(schema: DatasetSchema) -> list[str]:
    """The raw columns the schema reads, once each, in the order it names them (Parquet and JSON Lines read
    only these)."""
    return list(dict.fromkeys(column for _, column in schema.column_refs()))


_SCALAR = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating,
           pa.types.is_boolean, pa.types.is_null, pa.types.is_dictionary, pa.types.is_timestamp, pa.types.is_date)
_LIST = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)


def check_types(schema: DatasetSchema, arrow: pa.Schema, where: str) -> None:
    """Typed inputs (Parquet, JSON): each column must hold what its readers take, a list only where a list is
    read (a bag, a sequence, a vector), scalars elsewhere; else a SchemaError naming the key and the type."""
    roles = column_roles(schema)
    keys = {}
    for key, column in schema.column_refs():
        keys.setdefault(column, key)
    for column, role in roles.items():
        t = arrow.field(column).type
        ok = any(is_type(t) for is_type in _SCALAR)
        if role in ("items", "numbers"):
            ok = ok or (any(is_list(t) for is_list in _LIST) and any(f(t.value_type) for f in _SCALAR[:6]))
        if not ok:
            expected = "a list or a joined string" if role in ("items", "numbers") else "single values"
            raise SchemaError(f"column {column!r} of {where} holds {t}; expected {expected}", keys[column],
                              schema.source)


def null_tokens(table: pa.Table, tokens: tuple[str, ...]) -> pa.Table:
    """Typed inputs: text values listed as missing (``input.missing``) become nulls. Dictionary columns stay
    dictionaries (tokens looked up in the dictionary only, the indices of those made null)."""
    if not tokens:
        return table
    value_set = pa.array(list(tokens), pa.string())
    for i, f in enumerate(table.schema):
        t = f.type
        if pa.types.is_dictionary(t) and pa.types.is_string(t.value_type):
            col = table.column(i).unify_dictionaries().combine_chunks()
            hit = np.flatnonzero(pc.is_in(col.dictionary, value_set=value_set).to_numpy(zero_copy_only=False))
            if hit.size:
                indices = pc.if_else(pc.is_in(col.indices, value_set=pa.array(hit, col.indices.type)),
                                     pa.scalar(None, col.indices.type), col.indices)
                col = pa.DictionaryArray.from_arrays(indices, col.dictionary)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            col = table.column(i).combine_chunks().cast(pa.string())
            hit = pc.is_in(col, value_set=value_set)
            if pc.any(hit).as_py():
                col = pc.if_else(hit, pa.scalar(None, pa.string()), col)
        else:
            continue
        table = table.set_column(i, f.name, col)
    return table
