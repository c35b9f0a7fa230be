//! The network side: the server that binds and loads ([`server`]), the
//! listener that admits clients ([`listener`]) and the task that serves one
//! of them ([`connection`]). What a connection does with
//! a frame reads as: frame -> request -> (auth) -> route -> call -> reply.
//! Beside them, each concern that joins the server in its own file: who may
//! run what ([`auth`]), places per address ([`per_address`]), slow and idle
//! clients ([`timeouts`]), encryption ([`tls`]).

pub mod auth;
pub mod connection;
pub mod listener;
pub mod per_address;
pub mod server;
pub mod status;
pub mod timeouts;
pub mod tls;
