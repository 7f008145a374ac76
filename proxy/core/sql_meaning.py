"""What a SQL statement does, read by a real parser (sqlglot): the allowlist view of SQL.

Regexes find the shape of a write (``DELETE FROM``); they cannot see that
``SELECT pg_terminate_backend(42)`` ends a session or that ``SELECT * INTO t FROM u``
creates a table. Here a statement counts as a read only when the parser proves it is a
query with no side effect: a SELECT, set operation, VALUES, SHOW, DESCRIBE or plain EXPLAIN,
with no ``INTO``, no data-modifying CTE, and no function call that is not known to be free
of side effects. Anything else is not a read: a known dangerous function or statement gets its
own effect, every other statement, function and text the parser cannot read is mutating.

Dialects: the text is parsed as PostgreSQL and as MySQL (the two quoting and comment
families); it is a read only if every dialect that parses it says so. Only when neither
can, SQLite, BigQuery and T-SQL are tried. MySQL executable comments (``/*! ... */``, which
sqlglot drops) are never a read.

Pure and cached per distinct text (most agents repeat their statements); findings name the
statement kind or a function from the fixed tables here, never the text.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from typing import Final

import sqlglot
from sqlglot import exp

from proxy.core.action import Effect

__all__ = ["MAX_PARSE", "sql_meaning"]

MAX_PARSE: Final = 64 * 1024
"""Characters of one statement text that are parsed (~0.3 ms a KiB per dialect); a longer text
is not a proven read."""
CACHE_SIZE: Final = 4096
_CACHED_LENGTH: Final = 4096
"""Texts up to this long are cached (so the cache holds at most ~16 MiB of statements)."""

_D, _M, _A = Effect.DESTRUCTIVE, Effect.MUTATING, Effect.ADMIN
_PRIMARY: Final = ("postgres", "mysql")
_FALLBACK: Final = ("sqlite", "bigquery", "tsql")

# sqlglot warns, with the statement text, when it falls back to a raw Command: never log SQL.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

NOT_PARSED: Final = "text the parser cannot read, so not a proven read"
TOO_LONG: Final = "text too long to parse, so not a proven read"
UNKNOWN_FUNCTION: Final = "call to a function not known to be free of side effects"

_EXECUTABLE_COMMENT: Final = re.compile(r"/\*M?!")

# Functions with effects worth naming (lower-case names; schema qualifiers are dropped for
# pg_catalog only). Everything not listed here or in _PURE is mutating.
_FUNCTIONS: Final[dict[str, Effect]] = {
    **dict.fromkeys(
        (
            "pg_terminate_backend",
            "pg_cancel_backend",
            "lo_unlink",
            "pg_drop_replication_slot",
            "pg_file_unlink",
            "pg_replication_origin_drop",
            "dblink_exec",
            "pg_promote",
        ),
        _D,
    ),
    **dict.fromkeys(
        (
            "load_extension",
            "pg_reload_conf",
            "pg_rotate_logfile",
            "pg_read_file",
            "pg_read_binary_file",
            "pg_ls_dir",
            "pg_stat_file",
            "pg_file_write",
            "lo_import",
            "lo_export",
            "sys_exec",
            "sys_eval",
            "xp_cmdshell",
            "sp_configure",
            "load_file",
        ),
        _A,
    ),
}
# Functions sqlglot does not model (it parses them as "anonymous") that only compute a value.
_PURE: Final = frozenset(
    (
        # Spelled differently per dialect
        "now date datetime time to_date total weekday json_arrayagg"
        # PostgreSQL
        " age btrim col_description current_setting date_part format_type has_table_privilege"
        " has_schema_privilege has_database_privilege initcap json_array_elements json_array_elements_text"
        " json_build_array json_build_object json_each json_each_text json_extract_path json_extract_path_text"
        " json_object_keys json_populate_record json_typeof jsonb_agg jsonb_array_elements"
        " jsonb_array_elements_text jsonb_array_length jsonb_build_array jsonb_build_object jsonb_each"
        " jsonb_each_text jsonb_extract_path jsonb_extract_path_text jsonb_object_agg jsonb_object_keys"
        " jsonb_pretty jsonb_set jsonb_strip_nulls jsonb_typeof justify_days justify_hours make_date"
        " make_timestamp make_interval obj_description pg_backend_pid pg_database_size pg_get_constraintdef"
        " pg_get_functiondef pg_get_indexdef pg_get_userbyid pg_get_viewdef pg_indexes_size pg_relation_size"
        " pg_size_pretty pg_table_is_visible pg_table_size pg_total_relation_size pg_typeof pg_postmaster_start_time"
        " quote_ident quote_literal quote_nullable regexp_matches regexp_split_to_array regexp_split_to_table"
        " string_to_array array_to_string array_append array_prepend array_cat array_remove array_position"
        " array_positions cardinality to_number to_tsvector to_tsquery plainto_tsquery ts_rank ts_headline"
        " clock_timestamp statement_timestamp transaction_timestamp timeofday date_bin width_bucket"
        " inet_server_addr inet_client_addr row_to_json to_json to_jsonb array_lower array_upper"
        " lpad rpad ltrim rtrim translate chr ascii octet_length bit_length encode decode"
        # MySQL
        " date_format str_to_date unix_timestamp from_unixtime found_rows database schema user"
        " last_insert_id json_unquote json_object json_array json_contains json_keys json_length"
        " find_in_set field elt curdate curtime sysdate utc_timestamp utc_date timestampadd"
        " convert_tz period_diff weekofyear yearweek dayname monthname makedate maketime sec_to_time"
        " time_to_sec inet_aton inet_ntoa conv bin oct format_bytes"
        # SQLite
        " strftime julianday printf quote sqlite_version changes total_changes last_insert_rowid"
        " randomblob zeroblob unicode char likelihood likely unlikely json_group_array json_group_object"
        " json_insert json_replace json_remove json_patch json_valid json_quote"
        # BigQuery
        " format_date format_datetime format_time format_timestamp parse_date parse_datetime parse_time"
        " parse_timestamp to_json_string generate_date_array generate_timestamp_array timestamp_seconds"
        " timestamp_millis timestamp_micros unix_seconds unix_millis unix_micros date_from_unix_date"
        " array_concat array_reverse safe_divide safe_multiply safe_add safe_subtract net_host"
        " regexp_extract_all json_query json_value json_extract_scalar json_extract_array"
    ).split()
)

# Statements by what they do (top level or nested in a query, e.g. a data-modifying CTE).
_STATEMENTS: Final[tuple[tuple[type[exp.Expression], Effect, str], ...]] = (
    (exp.Delete, _D, "DELETE"),
    (exp.Drop, _D, "DROP"),
    (exp.TruncateTable, _D, "TRUNCATE"),
    (exp.Alter, _D, "ALTER"),
    (exp.Grant, _A, "GRANT"),
    (exp.Revoke, _A, "REVOKE"),
    (exp.Update, _M, "UPDATE"),
    (exp.Insert, _M, "INSERT"),
    (exp.Merge, _M, "MERGE"),
    (exp.Create, _M, "CREATE"),
    (exp.Copy, _M, "COPY"),
    (exp.Attach, _M, "ATTACH"),
    (exp.Detach, _M, "DETACH"),
    (exp.LoadData, _M, "LOAD DATA"),
    (exp.Pragma, _M, "PRAGMA"),
    (exp.Set, _M, "SET"),
    (exp.Use, _M, "USE"),
    (exp.Transaction, _M, "BEGIN"),
    (exp.Commit, _M, "COMMIT"),
    (exp.Rollback, _M, "ROLLBACK"),
    (exp.Command, _M, "command"),
)
_COMMAND_VERBS: Final[dict[str, tuple[Effect, str]]] = {
    "CALL": (_M, "CALL"),
    "DO": (_M, "DO"),
    "EXEC": (_M, "EXEC"),
    "EXECUTE": (_M, "EXECUTE"),
    "PREPARE": (_M, "PREPARE"),
    "VACUUM": (_M, "VACUUM"),
    "ANALYZE": (_M, "ANALYZE"),
    "REFRESH": (_M, "REFRESH"),
    "REINDEX": (_M, "REINDEX"),
    "CLUSTER": (_M, "CLUSTER"),
    "LOCK": (_M, "LOCK"),
    "NOTIFY": (_M, "NOTIFY"),
    "LISTEN": (_M, "LISTEN"),
    "DISCARD": (_M, "DISCARD"),
    "RESET": (_M, "RESET"),
    "CHECKPOINT": (_A, "CHECKPOINT"),
    "KILL": (_D, "KILL"),
    "SHUTDOWN": (_A, "SHUTDOWN"),
    "GRANT": (_A, "GRANT"),
    "REVOKE": (_A, "REVOKE"),
    "TRUNCATE": (_D, "TRUNCATE"),
    "COMMENT": (_M, "COMMENT"),
    "SECURITY": (_M, "SECURITY LABEL"),
    "IMPORT": (_M, "IMPORT"),
    "REASSIGN": (_A, "REASSIGN OWNED"),
}
_READ_COMMANDS: Final = frozenset({"SHOW", "DESCRIBE", "DESC"})
_EXPLAIN_OPTIONS: Final = re.compile(
    r"\s*(?:\((?P<paren>[^)]{0,400})\)|(?P<word>analy[sz]e|verbose|costs|buffers|timing|summary|settings|wal"
    r"|query\s+plan|extended|partitions|format\s*=?\s*\w+|true|false|on|off)\b)",
    re.IGNORECASE,
)

Findings = frozenset[tuple[Effect, str]]
_READ: Final[Findings] = frozenset()


def sql_meaning(text: str) -> Findings:
    """(effect, kind) pairs for what SQL ``text`` does beyond reading; empty only for a proven read."""
    return _cached_meaning(text) if len(text) <= _CACHED_LENGTH else _meaning(text)


def _meaning(text: str) -> Findings:
    if not text.strip():
        return _READ  # nothing runs
    if len(text) > MAX_PARSE:
        return frozenset({(_M, TOO_LONG)})
    if _EXECUTABLE_COMMENT.search(text):
        return frozenset({(_M, "MySQL executable comment")})
    for dialects in (_PRIMARY, _FALLBACK):
        readings = [found for dialect in dialects if (found := _reading(text, dialect)) is not None]
        if readings:
            return frozenset().union(*readings)
    return frozenset({(_M, NOT_PARSED)})


_cached_meaning: Final = functools.lru_cache(maxsize=CACHE_SIZE)(_meaning)


def _reading(text: str, dialect: str) -> Findings | None:
    """What ``text`` does as ``dialect`` reads it, or None when that dialect cannot parse it."""
    try:
        trees = sqlglot.parse(text, read=dialect)
    except Exception:  # ParseError, TokenError, RecursionError, or a parser bug: not parsed
        return None
    found: set[tuple[Effect, str]] = set()
    for tree in trees:
        if tree is not None:
            found.update(_statement(tree, dialect))
    return frozenset(found)


def _statement(tree: exp.Expression, dialect: str) -> Iterable[tuple[Effect, str]]:
    while isinstance(tree, exp.Subquery | exp.Paren):
        tree = tree.this
    if isinstance(tree, exp.Query | exp.Values | exp.Show):
        yield from _query(tree)
    elif isinstance(tree, exp.Describe):  # DESCRIBE t, or MySQL's EXPLAIN [ANALYZE] statement
        inner = tree.this
        if isinstance(inner, exp.Table):
            return
        if isinstance(inner, exp.Query):
            yield from _query(inner)  # MySQL's EXPLAIN ANALYZE runs the query
        else:
            yield from _statement(inner, dialect)
    elif isinstance(tree, exp.Command):
        yield from _command(tree, dialect)
    elif isinstance(tree, exp.Copy) and any(
        isinstance(f, exp.Identifier) and f.name.upper() == "PROGRAM" for f in tree.args.get("files") or ()
    ):
        yield _A, "COPY ... PROGRAM"  # the database server runs a shell command
    else:
        for kind, effect, label in _STATEMENTS:
            if isinstance(tree, kind):
                yield effect, label
                return
        yield _M, "statement that is not a query"


def _command(tree: exp.Command, dialect: str) -> Iterable[tuple[Effect, str]]:
    """A statement sqlglot keeps as raw text: SHOW and plain EXPLAIN read; EXPLAIN ANALYZE runs its statement."""
    verb = str(tree.this).upper()
    if verb in _READ_COMMANDS:
        return
    if verb == "EXPLAIN":
        rest = tree.expression.name if isinstance(tree.expression, exp.Literal) else str(tree.expression or "")
        analyse = False
        while (option := _EXPLAIN_OPTIONS.match(rest)) is not None and option.end() > 0:
            chosen = (option.group("paren") or option.group("word") or "").lower()
            analyse = analyse or "analy" in chosen
            rest = rest[option.end() :]
        if analyse:
            found = _reading(rest, dialect)
            yield from found if found is not None else ((_M, "EXPLAIN ANALYZE of a statement the parser cannot read"),)
        return
    yield _COMMAND_VERBS.get(verb, (_M, "statement that is not a query"))


def _query(tree: exp.Expression) -> Iterable[tuple[Effect, str]]:
    """Side effects anywhere inside a query: INTO, data-modifying CTEs, function calls."""
    for node in tree.walk():
        if isinstance(node, exp.Into):
            yield _M, "SELECT INTO"
        elif isinstance(node, exp.Anonymous):
            yield from _function(node)
        elif isinstance(node, exp.NextValueFor):
            yield _M, "NEXT VALUE FOR"  # advances a sequence
        elif isinstance(node, exp.Func) and type(node).__name__.startswith("Read"):
            yield _A, "call reading files on the database server"  # read_csv, read_parquet, ...
        elif isinstance(node, exp.Expression) and not isinstance(node, exp.Query | exp.Values):
            for kind, effect, label in _STATEMENTS:
                if isinstance(node, kind):
                    yield effect, label
                    break


def _function(node: exp.Anonymous) -> Iterable[tuple[Effect, str]]:
    name = str(node.name).lower()
    parent = node.parent
    if isinstance(parent, exp.Dot) and parent.expression is node:
        schema = str(parent.this.name if isinstance(parent.this, exp.Identifier | exp.Column) else parent.this).lower()
        if schema != "pg_catalog":  # a function in another schema can be anything, whatever its name
            yield _FUNCTIONS.get(name, _M), f"call to {name}()" if name in _FUNCTIONS else UNKNOWN_FUNCTION
            return
    if name in _FUNCTIONS:
        yield _FUNCTIONS[name], f"call to {name}()"
    elif name not in _PURE:
        yield _M, UNKNOWN_FUNCTION
