"""TPC-H at a small scale factor: every query's federated answer, and the pooled DataFusion one,
equal to DuckDB's over the same tables (bench/tpch.py, without its timings). Run by .ci/run:

    CONCORD_BIN=target/debug/concord python -m pytest .ci/tpch_test.py
"""

import decimal
import json
import os
import subprocess
import sys
import tempfile

import pyarrow as pa
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import tpch  # noqa: E402

SF = "0.01"


def concord_bin():
    return os.environ.get("CONCORD_BIN", "target/debug/concord")


def query_names():
    out = subprocess.run(
        [concord_bin(), "bench", "tpch", "--print-queries"], check=True, capture_output=True, text=True
    ).stdout
    return [q["name"] for q in json.loads(out)]


@pytest.fixture(scope="module")
def results():
    root = tempfile.mkdtemp(prefix="concord-tpch-")
    timings, results = tpch.run(SF, 1, concord_bin(), root, port_base=7930)
    assert [t for t, _ in timings["tables"]] == tpch.TABLES
    assert dict(timings["tables"])["lineitem"] > 50_000
    return {r["name"]: r for r in results}


def test_the_eight_queries_are_run():
    assert query_names() == ["q1", "q3", "q5", "q6", "q10", "q12", "q14", "q19"]


@pytest.mark.parametrize("name", query_names())
def test_federated_and_pooled_answers_equal_duckdbs(results, name):
    r = results[name]
    assert r["not_answered"] is None, r["not_answered"]
    assert r["rows"] > 0
    assert r["federated_differs"] is None, r["federated_differs"]
    assert r["pooled_differs"] is None, r["pooled_differs"]


def table(**columns):
    return pa.table(columns)


def test_the_comparison_sees_a_cent_a_row_a_name_and_a_float_beyond_the_decimal():
    d = decimal.Decimal
    expected = table(n=pa.array([d("1.25"), d("2.50")], pa.decimal128(15, 2)), k=["a", "b"])
    assert tpch.first_difference(expected, expected) is None
    # The same values at another scale are equal; a cent is not.
    wider = table(n=pa.array([d("1.2500"), d("2.5000")], pa.decimal128(25, 4)), k=["a", "b"])
    assert tpch.first_difference(wider, expected) is None
    cent = table(n=pa.array([d("1.25"), d("2.51")], pa.decimal128(15, 2)), k=["a", "b"])
    assert "row 1, column n" in tpch.first_difference(cent, expected)
    assert "1 rows, expected 2" in tpch.first_difference(expected.slice(0, 1), expected)
    renamed = table(m=expected["n"], k=expected["k"])
    assert "columns" in tpch.first_difference(renamed, expected)
    # DuckDB's DOUBLE against DataFusion's decimal(19,6): equal within the decimal's last digit.
    avg = table(a=pa.array([d("25.522005")], pa.decimal128(19, 6)))
    assert tpch.first_difference(avg, table(a=[25.5220054])) is None
    assert tpch.first_difference(avg, table(a=[25.52201])) is not None
    assert tpch.first_difference(table(k=["a", None]), table(k=["a", "b"])) is not None
