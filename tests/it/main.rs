//! The integration tests: one binary, one module per area, sharing `support`.
//!
//! Every test that needs a server takes the shared throwaway cluster
//! (`support::shared_url`) or starts one of its own; `DATABASE_URL` replaces the shared
//! one. Run one area with `cargo test --test it delivery::`.

mod support;

mod alloc;
mod bad_input;
mod delivery;
mod durable;
mod existing_config;
mod failover;
mod faults;
mod idle;
#[cfg(feature = "serde")]
mod json;
mod layout;
mod lifecycle;
mod live;
#[cfg(feature = "metrics")]
mod metrics;
mod misbehaving;
mod pooler;
mod reconnect;
mod secrets;
mod sending;
mod server_language;
mod soak;
mod stats;
mod subscription_stats;
#[cfg(feature = "tls")]
mod tls;
mod versions;
