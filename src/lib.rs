//! kmflow: a streaming analytics engine for EVE Online killmails.
//!
//! Kafka (or the built-in generator) → timely/differential dataflow (`kmflow-dataflows`) →
//! RocksDB state → Axum read API and Prometheus metrics.

pub mod api;
pub mod app;
pub mod cluster;
pub mod config;
pub mod feed;
pub mod files;
pub mod import;
pub mod metrics;
pub mod serve;
pub mod source;
pub mod state;
