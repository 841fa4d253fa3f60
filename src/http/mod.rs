//! HTTP/1.1 as the broker speaks it inside the tunnel: request heads parsed in place, body
//! framing decided once, chunked bodies decoded strictly, response heads written into the caller's
//! buffer.
//!
//! Invariants:
//! * A [`RequestHead`] exists only for a head that passed every smuggling check: one framing
//!   (`Content-Length` xor `Transfer-Encoding: chunked`), no duplicate or invalid lengths, no
//!   obsolete line folding, no bare CR or LF, exactly one `Host` on HTTP/1.1.
//! * Nothing here allocates per request once a connection's [`RequestHead`] has grown to its
//!   working size; header positions are offsets into the connection's buffer.
//! * Every rejection maps to one status code ([`HeadError::status`]).

mod chunked;
mod request;
mod response;

pub use chunked::{ChunkError, ChunkedDecoder, Decoded};
pub use request::{
    BodyFraming, HeadError, Limits, Method, RequestHead, is_token, parse_head, parse_method,
    trim_ows,
};
pub use response::{ResponseHead, reason_phrase};
