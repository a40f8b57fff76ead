//! pgmeridian: a PostgreSQL-wire proxy. Module map in README "Where to look".
pub mod config;
pub mod error;
pub mod protocol;
