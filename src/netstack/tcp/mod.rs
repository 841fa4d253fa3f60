//! Our own TCP: a sans-IO connection core built for WAN paths, on smoltcp's wire types
//! (issue 19). Work in progress: the data structures and the loss-recovery and congestion
//! control algorithms come first; the connection that uses them follows.

// Used by the connection core added next.
#![allow(dead_code)]

mod cc;
mod prr;
mod rack;
mod reassembly;
mod ring;
mod rtt;
mod scoreboard;
