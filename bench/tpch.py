#!/usr/bin/env python3
"""TPC-H across a federation against pooled DataFusion and DuckDB, in one run.

    python3 -m venv .ci/.venv && .ci/.venv/bin/pip install -r .ci/requirements.txt
    cargo build --release
    .ci/.venv/bin/python bench/tpch.py --sf 1 --iterations 5

1. `tpchgen-cli parquet` writes the eight tables at the scale factor (real TPC-H types:
   decimal(15,2), dates, text) under target/bench/tpch/sf<SF>/tables, once per scale factor.
2. `concord bench tpch` splits lineitem and orders over three members by order key, puts
   customer, nation, region, part and supplier at the third member, all under a public policy,
   starts the federation on loopback and times each query federated (through the first member's
   local API) and over the pooled tables in one DataFusion context, in turn; it writes both
   answers as Parquet.
3. DuckDB runs the same SQL over the pooled tables, the same number of times.
4. Every answer is checked against DuckDB's: the same columns and rows in the same order, text,
   dates and integers equal, decimals equal exactly; where one engine answers a decimal and the
   other a float (DuckDB's AVG and division are DOUBLE, DataFusion's decimal), within the last
   digit of the decimal.

It prints a table of medians and ratios (also written to target/bench/tpch/sf<SF>/report.md) and
exits 1 if any answer differs or a query is not answered.
"""

import argparse
import decimal
import json
import os
import statistics
import subprocess
import sys
import time

TABLES = ["lineitem", "orders", "customer", "nation", "region", "part", "supplier"]


def generate(sf, folder):
    """The tables at scale factor `sf` in `folder`, generated unless already there."""
    if all(os.path.exists(os.path.join(folder, t + ".parquet")) for t in TABLES):
        return
    os.makedirs(folder, exist_ok=True)
    tpchgen = os.path.join(os.path.dirname(sys.executable), "tpchgen-cli")
    if not os.path.exists(tpchgen):
        tpchgen = "tpchgen-cli"
    subprocess.run(
        [tpchgen, "parquet", "-s", str(sf), "--output-dir", folder, "--tables", ",".join(TABLES), "--overwrite"],
        check=True,
    )


def queries(concord):
    """The benchmark's queries as `concord bench tpch` runs them: the same SQL text for DuckDB."""
    out = subprocess.run([concord, "bench", "tpch", "--print-queries"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def federate(concord, tables, work, iterations, port_base, only=None):
    """Runs `concord bench tpch`; returns its timings.json."""
    cmd = [
        concord,
        "bench",
        "tpch",
        "--data",
        tables,
        "--dir",
        work,
        "--iterations",
        str(iterations),
        "--port-base",
        str(port_base),
    ]
    if only:
        cmd += ["--queries", ",".join(only)]
    proc = subprocess.run(cmd, env={**os.environ, "NO_COLOR": "1"}, capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    sys.stdout.write(proc.stdout)
    path = os.path.join(work, "timings.json")
    if not os.path.exists(path):
        raise RuntimeError(f"concord bench tpch failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    with open(path) as f:
        timings = json.load(f)
    return timings


def duckdb_runs(tables, sql_by_name, iterations):
    """Each query over the pooled tables in DuckDB: its times in ms and its last answer."""
    import duckdb

    con = duckdb.connect()
    for t in TABLES:
        path = os.path.join(tables, t + ".parquet").replace("'", "''")
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{path}')")
    out = {}
    for name, sql in sql_by_name.items():
        times = []
        answer = None
        for i in range(iterations + 1):
            start = time.perf_counter()
            answer = con.sql(sql).to_arrow_table()
            elapsed = (time.perf_counter() - start) * 1000
            if i > 0:
                times.append(elapsed)
        out[name] = (times, answer)
    return out


def rows_of(table):
    """A pyarrow table (or record batch reader) as column names and rows of Python values."""
    if hasattr(table, "read_all"):
        table = table.read_all()
    return table.column_names, [tuple(r.values()) for r in table.to_pylist()]


def same_value(a, b):
    """Whether two cells agree: decimals exactly, a decimal and a float within the decimal's last
    digit, floats within a relative 1e-9, anything else equal."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, decimal.Decimal) and isinstance(b, decimal.Decimal):
        return a == b
    if isinstance(a, (decimal.Decimal, float)) and isinstance(b, (decimal.Decimal, float)):
        dec = a if isinstance(a, decimal.Decimal) else b if isinstance(b, decimal.Decimal) else None
        tolerance = 1e-9 * max(abs(float(a)), abs(float(b)), 1.0)
        if dec is not None:
            tolerance = max(tolerance, 10.0 ** dec.as_tuple().exponent)
        return abs(float(a) - float(b)) <= tolerance
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return a == b


def first_difference(answer, expected):
    """The first way `answer` differs from `expected` (pyarrow tables), or None."""
    names_a, rows_a = rows_of(answer)
    names_b, rows_b = rows_of(expected)
    if names_a != names_b:
        return f"columns {names_a}, expected {names_b}"
    if len(rows_a) != len(rows_b):
        return f"{len(rows_a)} rows, expected {len(rows_b)}"
    for i, (ra, rb) in enumerate(zip(rows_a, rows_b)):
        for name, x, y in zip(names_a, ra, rb):
            if not same_value(x, y):
                return f"row {i}, column {name}: {x!r}, expected {y!r}"
    return None


def run(sf, iterations, concord, root, port_base=7600, only=None):
    """The whole harness; returns one result per query: name, medians, ratios, differences."""
    import pyarrow.parquet as pq

    base = os.path.join(root, f"sf{sf}")
    tables = os.path.join(base, "tables")
    generate(sf, tables)
    sql_by_name = {q["name"]: q["sql"] for q in queries(concord) if not only or q["name"] in only}
    timings = federate(concord, tables, os.path.join(base, "run"), iterations, port_base, only)
    duck = duckdb_runs(tables, sql_by_name, iterations)
    results = []
    for q in timings["queries"]:
        name = q["name"]
        d_times, d_answer = duck[name]
        r = {
            "name": name,
            "not_answered": q["not_answered"],
            "duckdb_ms": statistics.median(d_times),
            "federated_differs": None,
            "pooled_differs": None,
        }
        if q["not_answered"] is None:
            r["federated_ms"] = statistics.median(q["federated_ms"])
            r["pooled_ms"] = statistics.median(q["pooled_ms"])
            r["rows"] = q["rows"]
            r["federated_differs"] = first_difference(pq.read_table(q["federated_answer"]), d_answer)
            r["pooled_differs"] = first_difference(pq.read_table(q["pooled_answer"]), d_answer)
        results.append(r)
    return timings, results


def report(sf, timings, results):
    lines = [
        f"TPC-H SF {sf}: lineitem and orders split over three members by order key, "
        "customer, nation, region, part, supplier at the third member, every table public.",
        "",
        "Rows pooled: " + ", ".join(f"{t} {n}" for t, n in timings["tables"]),
        "",
        "| query | federated ms | pooled DataFusion ms | DuckDB ms | federated / pooled | federated / DuckDB | answer |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["not_answered"] is not None:
            lines.append(f"| {r['name']} | not answered: {r['not_answered']} | | {r['duckdb_ms']:.1f} | | | |")
            continue
        answer = "equal to DuckDB's"
        if r["federated_differs"]:
            answer = "federated DIFFERS from DuckDB: " + r["federated_differs"]
        elif r["pooled_differs"]:
            answer = "pooled DataFusion DIFFERS from DuckDB: " + r["pooled_differs"]
        lines.append(
            f"| {r['name']} | {r['federated_ms']:.1f} | {r['pooled_ms']:.1f} | {r['duckdb_ms']:.1f} "
            f"| {r['federated_ms'] / r['pooled_ms']:.2f} | {r['federated_ms'] / r['duckdb_ms']:.2f} "
            f"| {r['rows']} rows, {answer} |"
        )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sf", default="1", help="TPC-H scale factor (1 is about 6 million line items)")
    p.add_argument("--iterations", type=int, default=5, help="timed runs of each query after one warm-up")
    p.add_argument("--concord", default="target/release/concord", help="the concord binary")
    p.add_argument("--dir", default="target/bench/tpch", help="where tables, nodes and answers go")
    p.add_argument("--port-base", type=int, default=7600, help="first port of the members' listeners")
    p.add_argument("--queries", default="", help="only these queries, comma-separated (q1,q6)")
    args = p.parse_args()
    if args.iterations < 1:
        p.error("--iterations must be at least 1")
    only = [q for q in args.queries.split(",") if q]
    timings, results = run(args.sf, args.iterations, args.concord, args.dir, args.port_base, only)
    text = report(args.sf, timings, results)
    path = os.path.join(args.dir, f"sf{args.sf}", "report.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"written to {path}")
    bad = [r["name"] for r in results if r["not_answered"] or r["federated_differs"] or r["pooled_differs"]]
    if bad:
        print("not answered or not equal to DuckDB's: " + ", ".join(bad), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
