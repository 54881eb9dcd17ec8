//! The integration suite: one binary, modules per area. Server tests need the PostgreSQL and
//! MariaDB instances that tests/run.sh starts (it exports RECON_TEST_PG_URL / RECON_TEST_MYSQL_URL).

mod support;

mod apply;
mod audit;
mod cli;
mod config;
mod convergence;
mod engine;
mod fidelity;
mod files;
mod fuzz_corpus;
mod hostile;
mod http;
mod http_faults;
mod incremental;
mod mappings;
mod mariadb;
mod network;
mod postgres;
mod properties;
mod reviewed;
mod secrets;
mod soak;
mod sqlite;
mod text_matrix;
