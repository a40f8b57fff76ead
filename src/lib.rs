//! pgmeridian: a PostgreSQL-wire proxy that sends writes to the primary and reads to the
//! nearest caught-up replica. The data path, in the order a connection meets it:
//!
//! `server` accepts → `session::handshake` negotiates TLS, answers CancelRequest (`cancel`),
//! authenticates (`auth`) and logs in to a backend (`backend`) → `session::relay` frames
//! client messages into batches, asks `route` where each goes, and streams backend bytes back.
//!
//! An admin user connecting to the database `pgmeridian` gets the admin console (`console`)
//! instead: SHOW commands over shared state, PAUSE/RESUME (`control`), DRAIN, RELOAD.
//!
//! Pure modules (no sockets, clocks or randomness): `protocol`, `config`, `route`.
//! Desired state: `config` → `topology`, published through `app::Shared`.

pub mod admin;
pub mod app;
pub mod auth;
pub mod backend;
pub mod cancel;
pub mod catalog;
pub mod causal;
pub mod classify;
pub mod clients;
pub mod config;
pub mod console;
pub mod control;
pub mod delay;
pub mod demo;
pub mod error;
pub mod geo;
pub mod health;
pub mod localpg;
pub mod memory;
pub mod metrics;
pub mod occupancy;
pub mod pool;
pub mod protocol;
pub mod proxy_protocol;
pub mod reload;
pub mod route;
pub mod server;
pub mod session;
pub mod status;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod topology;
pub mod wire;
