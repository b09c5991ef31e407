//! Helpers shared by the teleport benches (the bench targets themselves live in `benches/`).
//!
//! - [`corpus`]: the traffic of the compression-ratio bench, recorded real-world API exchanges
//!   fetched at run time (`benches/fetch_corpus.py`), with a generated fallback.

pub mod corpus;
