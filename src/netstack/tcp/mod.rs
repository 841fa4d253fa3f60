//! Our own TCP: a sans-IO connection core built for WAN paths, on smoltcp's wire types
//! (issue 19). Work in progress: the data structures come first; the connection that uses them
//! follows.

// Used by the connection core added next.
#![allow(dead_code)]

mod reassembly;
mod ring;
mod rtt;
mod scoreboard;
