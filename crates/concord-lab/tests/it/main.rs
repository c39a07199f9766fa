//! Scenario tests: nodes started on 127.0.0.1, talked to as members and their analysts would.

mod bad_input;
mod console;
mod faults;
mod flight_sql;
mod fuzz_corpora;
mod governance;
mod hostile;
mod local_api;
mod peer_refusals;
mod policy;
mod privacy;
mod smoke;
mod sources;
mod support;
mod tlog;
mod witness_audit;
