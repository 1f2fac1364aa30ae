//! SMTP on the wire, as much as a proxy, a sink and a load generator need: bounded
//! line and reply reading ([`Wire`]), command verbs, replies with their enhanced codes
//! and queue ids, and the end of `DATA` ([`DotScanner`]).
//!
//! Nothing here looks at message content beyond the bytes that end it.

mod command;
mod data;
mod wire;

pub use command::{MAX_MAILBOX, Verb, bdat_args, mailbox, param, path_arg, verb};
pub use data::{DotScanner, Scan};
pub use wire::{
    Closed, Io, Line, MAX_COMMAND_LINE, MAX_REPLY_LINE, MAX_REPLY_LINES, READ_CHUNK, Reply, Wire,
    WireError,
};
