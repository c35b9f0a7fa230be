//! The network side: the listener that accepts clients ([`server`]) and the
//! task that serves one of them ([`connection`]). What a connection does with
//! a frame reads as: frame -> request -> route -> call -> reply.

pub mod connection;
pub mod server;
