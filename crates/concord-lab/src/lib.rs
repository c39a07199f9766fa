//! Tools that drive whole nodes, kept out of the node library: the demo federation (`demo`),
//! its scripted smoke tour (`smoke`) and the benchmarks (`bench`). The scenario tests in
//! `tests/it` use the same federation set-up: they start nodes on 127.0.0.1 and talk to them as
//! members and analysts would.

#![warn(missing_docs)]

pub mod ballista;
pub mod bench;
pub mod crash_bench;
pub mod demo;
pub mod fuzz;
pub mod governance_bench;
pub mod load_bench;
pub mod members_bench;
pub mod postgres;
pub mod processes;
pub mod scale_bench;
pub mod smoke;
pub mod tpch_bench;
