"""Arrow Flight SQL as analysts' tools use it: ADBC's Flight SQL driver into pandas and Polars,
against a demo federation this module starts and stops. Run by .ci/run:

    CONCORD_BIN=target/debug/concord python -m pytest .ci/flight_sql_test.py
"""

import io
import json
import os
import signal
import subprocess
import tempfile
import time

import adbc_driver_flightsql.dbapi as flight_sql
import pandas as pd
import polars as pl
import pytest
from adbc_driver_flightsql import DatabaseOptions

GROUP_BY = (
    "SELECT sector, count(*) AS n, sum(value_added) AS total "
    "FROM digital_economy GROUP BY sector ORDER BY sector"
)
REFUSED = "SELECT case_id, region, count(*) FROM bravo.health_cases GROUP BY case_id, region"


def concord_bin():
    return os.environ.get("CONCORD_BIN", "target/debug/concord")


@pytest.fixture(scope="module")
def demo():
    concord = concord_bin()
    work = tempfile.mkdtemp(prefix="concord-flight-")
    log = open(os.path.join(work, "demo.log"), "w")
    proc = subprocess.Popen(
        [concord, "demo", "--dir", os.path.join(work, "demo"), "--port-base", "7860"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
    )
    path = os.path.join(work, "demo", "demo.json")
    deadline = time.time() + 300
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("the demo did not start: " + open(os.path.join(work, "demo.log")).read())
        time.sleep(0.5)
    time.sleep(0.5)
    with open(path) as f:
        file = json.load(f)
    yield concord, file["members"][0]
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def connect(member, token=None, **headers):
    db_kwargs = {DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer " + (token or member["analyst_token"])}
    for name, value in headers.items():
        db_kwargs[DatabaseOptions.RPC_CALL_HEADER_PREFIX.value + name.replace("_", "-")] = value
    return flight_sql.connect(member["flight_sql_url"], db_kwargs=db_kwargs, autocommit=True)


def concord_csv(concord, member, sql):
    """What `concord query --format csv` answers, as pandas reads it."""
    env = {**os.environ, "CONCORD_NODE": member["local_url"], "CONCORD_TOKEN": member["analyst_token"]}
    out = subprocess.run(
        [concord, "query", "--format", "csv", sql], env=env, check=True, capture_output=True, text=True
    ).stdout
    return pd.read_csv(io.StringIO(out))


def test_demo_json_names_a_flight_sql_url(demo):
    _, member = demo
    assert member["flight_sql_url"].startswith("grpc://127.0.0.1:")


def test_a_federated_group_by_in_pandas_and_polars_equals_concord_query(demo):
    concord, member = demo
    expected = concord_csv(concord, member, GROUP_BY)
    assert len(expected) > 1
    with connect(member) as conn, conn.cursor() as cur:
        cur.execute(GROUP_BY)
        table = cur.fetch_arrow_table()
    frame = table.to_pandas()
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False, check_exact=True)
    # Who contributed is in the schema's metadata, as `--provenance` shows it.
    provenance = json.loads(table.schema.metadata[b"concord.provenance"])
    assert sorted({p["member"] for p in provenance}) == ["alpha", "bravo", "charlie"]
    with connect(member) as conn:
        polars = pl.read_database(GROUP_BY, conn)
    pd.testing.assert_frame_equal(polars.to_pandas(), expected, check_dtype=False, check_exact=True)


def test_a_refused_query_raises_with_the_refusals_message(demo):
    _, member = demo
    with connect(member) as conn, conn.cursor() as cur:
        with pytest.raises(Exception) as refused:
            cur.execute(REFUSED)
            cur.fetch_arrow_table()
    message = str(refused.value)
    assert "case_id is hidden" in message and "policy_refused" in message, message


def test_get_objects_lists_the_shared_schemas_member_datasets_and_local_tables(demo):
    _, member = demo
    with connect(member) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    tables = {
        (schema["db_schema_name"], table["table_name"], table["table_type"])
        for catalog in objects
        for schema in catalog["catalog_db_schemas"]
        for table in schema["db_schema_tables"]
    }
    assert ("public", "health_cases", "FEDERATED TABLE") in tables, tables
    assert ("public", "digital_economy", "FEDERATED TABLE") in tables, tables
    assert ("bravo", "digital_economy", "MEMBER DATASET") in tables, tables
    assert ("local", "health_cases", "TABLE") in tables, tables
    with connect(member) as conn:
        schema = conn.adbc_get_table_schema("digital_economy", db_schema_filter="public")
    assert schema.names == ["year", "sector", "value_added", "share_of_gdp"]


def test_a_prepared_statement_with_a_parameter(demo):
    concord, member = demo
    literal = "SELECT count(*) AS n, sum(value_added) AS total FROM digital_economy WHERE year = 2025"
    expected = concord_csv(concord, member, literal)
    with connect(member) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n, sum(value_added) AS total FROM digital_economy WHERE year = $1", (2025,))
        by_number = cur.fetch_arrow_table().to_pandas()
        cur.execute("SELECT count(*) AS n, sum(value_added) AS total FROM digital_economy WHERE year = ?", (2025,))
        by_mark = cur.fetch_arrow_table().to_pandas()
        cur.execute("SELECT count(*) AS n FROM digital_economy WHERE sector = $1", ("x' OR '1'='1",))
        hostile = cur.fetch_arrow_table().to_pandas()
        # A negative number after a minus, then a string: still two values, never a comment.
        cur.execute(
            "SELECT count(*) AS n FROM digital_economy WHERE year > -$1 AND sector = $2",
            (-1, "0 OR 1=1 --"),
        )
        commented = cur.fetch_arrow_table().to_pandas()
        # A bound value passes the same checks as the SQL's own literals.
        with pytest.raises(Exception) as refused:
            cur.execute("SELECT count(*) AS n FROM digital_economy WHERE sector = $1", ("\nx",))
            cur.fetch_arrow_table()
        assert "line breaks" in str(refused.value), str(refused.value)
    pd.testing.assert_frame_equal(by_number, expected, check_dtype=False, check_exact=True)
    pd.testing.assert_frame_equal(by_mark, expected, check_dtype=False, check_exact=True)
    assert hostile["n"].tolist() == [0], "a string parameter is one literal, never SQL"
    assert commented["n"].tolist() == [0], "values are bound in the plan, not pasted into the text"


def test_a_wrong_token_and_a_bad_option_are_refused(demo):
    _, member = demo
    with connect(member, token="concord_nobody") as conn, conn.cursor() as cur:
        with pytest.raises(Exception) as refused:
            cur.execute("SELECT 1")
    assert "unknown token" in str(refused.value), str(refused.value)
    with connect(member, x_concord_partial="maybe") as conn, conn.cursor() as cur:
        with pytest.raises(Exception) as refused:
            cur.execute("SELECT 1")
    assert "x-concord-partial" in str(refused.value), str(refused.value)
    with connect(member, x_concord_purpose="quarterly report") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetch_arrow_table().to_pylist() == [{"one": 1}]
