#!/usr/bin/env bash
# The local API against its own OpenAPI document: a demo federation on loopback, schemathesis
# with an analyst's and a steward's token. Fails on any 5xx and on any response (status, content
# type, body) the document does not describe.
set -euo pipefail
concord="$1"
venv="$2"
work=$(mktemp -d)
"$concord" demo --dir "$work/demo" --port-base 7760 >"$work/demo.log" 2>&1 &
demo=$!
trap 'kill "$demo" 2>/dev/null || true; wait "$demo" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do
    [ -f "$work/demo/demo.json" ] && break
    kill -0 "$demo" 2>/dev/null || { cat "$work/demo.log"; exit 1; }
    sleep 1
done
[ -f "$work/demo/demo.json" ] || { echo "the demo did not start"; cat "$work/demo.log"; exit 1; }
url=$("$venv/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['members'][0]['local_url'])" "$work/demo/demo.json")
for role in analyst steward; do
    token=$("$venv/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['members'][0][sys.argv[2] + '_token'])" "$work/demo/demo.json" "$role")
    echo "-- schemathesis as $role"
    "$venv/bin/schemathesis" run "$url/api/openapi.json" \
        --header "Authorization: Bearer $token" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --max-examples 30 --seed 1 --no-color --generation-database none --wait-for-schema 60 \
        --report junit --report-dir target/schemathesis-$role
done
