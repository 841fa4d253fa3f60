//! The chunked-body decoder (`http::ChunkedDecoder`) on arbitrary bytes, fed whole and fed in
//! pieces cut where the input says: nothing may panic, the step results stay inside the input,
//! and the two feedings agree exactly (same body bytes, same end, same error or none) — a
//! decoder whose answer depends on how TCP segmented the body would be a smuggling hazard.
//!
//! Input: the first byte seeds the cut sizes (1–16 bytes per piece); the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgbroker::http::ChunkedDecoder;

/// What the decoder made of `body` fed in pieces of the sizes `cuts` yields (cycled); `None`
/// sizes mean whole. Returns (body bytes, done, failed, bytes consumed).
fn run(body: &[u8], cuts: Option<u8>) -> (Vec<u8>, bool, bool, usize) {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut fed = 0usize; // how much of `body` the "socket" has delivered so far
    let mut pos = 0usize; // how much the decoder consumed
    let mut seed = cuts.map(u32::from);
    loop {
        let avail = match &mut seed {
            None => body.len(),
            Some(s) => {
                *s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                fed = (fed + 1 + (*s >> 16) as usize % 16).min(body.len());
                fed
            }
        };
        // Decode what is available until the decoder wants more.
        loop {
            let input = &body[pos..avail];
            match d.decode(input) {
                Ok(step) => {
                    assert!(step.consumed <= input.len());
                    assert!(step.data.start <= step.data.end && step.data.end <= step.consumed);
                    out.extend_from_slice(&input[step.data.clone()]);
                    pos += step.consumed;
                    if step.done {
                        assert!(d.is_done());
                        return (out, true, false, pos);
                    }
                    if step.consumed == 0 {
                        break;
                    }
                }
                Err(_) => return (out, false, true, pos),
            }
        }
        if avail == body.len() {
            return (out, false, false, pos);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let whole = run(body, None);
    let pieces = run(body, Some(seed));
    let bytewise = run(body, Some(0)); // exercised with the same LCG but from seed 0
    assert_eq!(whole.1, pieces.1, "done differs with segmentation");
    assert_eq!(whole.2, pieces.2, "error differs with segmentation");
    if !whole.2 {
        assert_eq!(whole.0, pieces.0, "body differs with segmentation");
        assert_eq!(whole.0, bytewise.0);
    }
    if whole.1 {
        assert_eq!(whole.3, pieces.3, "the body ends at a different byte");
    }
    assert!(whole.0.len() <= body.len());
});
