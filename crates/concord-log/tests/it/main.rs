//! The log's proofs against the RFC 6962 test vectors (every negative case included) and
//! property tests.

mod proofs;
mod vectors;
