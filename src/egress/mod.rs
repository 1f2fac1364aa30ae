//! The upstream side of the relay: a pool of keep-alive connections per listener, each driven by the request using it, rustls
//! (ring) for https upstreams. Requests go out as the client sent them, less hop-by-hop
//! headers; replies come back bounded in size.

pub mod http;
pub mod pool;
pub mod smpp;
pub mod smtp;
