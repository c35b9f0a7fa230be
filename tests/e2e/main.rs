//! End-to-end tests: the real binary, real plugins, real TCP on 127.0.0.1.

mod batch;
mod capabilities;
mod cli;
mod compile;
mod dev;
mod kv_backends;
mod languages;
mod lifecycle;
mod observability;
mod plugins;
mod protocol;
mod reload;
mod rollout;
mod sandbox;
mod scale_out;
mod scenes;
mod schedules;
mod security;
mod state;
mod tls;

use plugboard_test_support as support;
