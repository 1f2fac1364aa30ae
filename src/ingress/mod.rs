//! Client-facing listeners. Parsers ([`profile`]) do no I/O; [`http`] is the server and
//! [`tls`] loads certificates for it.

pub mod http;
pub mod profile;
pub mod smpp;
pub mod smtp;
pub mod tls;
