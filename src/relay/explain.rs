//! `wgbroker explain-webhook`: which relay and which filter decide a stored payload.
//!
//! The payload is a file: a webhook body as the SCM sent it (with its headers given by `-H`), or
//! an event from the spool (`spool_dir/<relay>/<seq>.evt`, headers included; its relay is its
//! directory's name unless `--relay` names one). The signature is reported on its own line and
//! does not stop the explanation: a saved payload rarely comes with a valid signature, and the
//! operator wants to know what the filters make of it. Nothing from the body is printed.

use super::spool::{Event, MAGIC};
use super::{Relays, Unverified, Verdict, Webhook};

/// The outcome, as the exit status: 0 relayed, 1 filtered out, 2 refused (or no such relay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub lines: Vec<String>,
    pub status: u8,
}

/// Explains `payload` (file contents) for `relay` (or, for a spooled event, the relay
/// `spool_relay` it was spooled for), with extra request `headers`.
pub fn explain(
    relays: &Relays,
    relay: Option<&str>,
    spool_relay: Option<&str>,
    payload: &[u8],
    headers: &[(String, Vec<u8>)],
) -> Explanation {
    let mut lines = Vec::new();
    let mut all: Vec<(String, Vec<u8>)> = Vec::new();
    let spooled = payload.starts_with(MAGIC);
    let body: Vec<u8> = if spooled {
        match Event::decode(payload) {
            Some(ev) => {
                lines.push(format!(
                    "spooled event: {} bytes, event {:?}, delivery {:?}",
                    ev.body.len(),
                    ev.event.as_deref().unwrap_or("-"),
                    ev.delivery.as_deref().unwrap_or("-")
                ));
                all.extend(ev.headers);
                ev.body
            }
            None => {
                return Explanation {
                    lines: vec!["the file starts like a spooled event but does not parse".into()],
                    status: 2,
                };
            }
        }
    } else {
        payload.to_vec()
    };
    all.extend(headers.iter().cloned());
    let Some(name) = relay.or(spool_relay.filter(|_| spooled)) else {
        return Explanation {
            lines: vec!["name the relay with --relay".into()],
            status: 2,
        };
    };
    let path = format!("/relay/{name}");
    let Some(index) = relays.route(&path) else {
        let known: Vec<&str> = relays.relays.iter().map(|r| r.name.as_str()).collect();
        return Explanation {
            lines: vec![format!("no relay {name:?} (configured: {known:?})")],
            status: 2,
        };
    };
    let h: Vec<(&str, &[u8])> = all
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let w = Webhook {
        method: "POST",
        path: &path,
        headers: &h,
        body: &body,
    };
    let relay = &relays.relays[index];
    lines.push(format!(
        "relay {:?} (scm {:?}) -> {}",
        relay.name, relay.scm, relay.destination.authority
    ));
    match relays.verify(index, &h, &body) {
        Ok(()) => lines.push("signature: valid".into()),
        Err(Unverified::Missing(hdr)) => lines.push(format!(
            "signature: not checked ({hdr} not given; the broker answers 401 without it)"
        )),
        Err(e) => lines.push(format!("signature: {e} (the broker answers 401)")),
    }
    let verdict = relays.decide_with(&w, false);
    let status = match &verdict {
        Verdict::Accept(a) => {
            lines.push(format!(
                "RELAYED: event {:?}; every filter holds; answered 202 once spooled",
                a.event.as_deref().unwrap_or("-")
            ));
            0
        }
        Verdict::Filtered { reason, .. } => {
            lines.push(format!("FILTERED OUT by {reason}; answered 200"));
            1
        }
        Verdict::Refused { status, reason } => {
            lines.push(format!("REFUSED {status}: {reason}"));
            2
        }
    };
    let signature_bad = matches!(
        relays.verify(index, &h, &body),
        Err(Unverified::Mismatch(_) | Unverified::Malformed(_))
    );
    Explanation {
        lines,
        status: if status == 0 && signature_bad {
            2
        } else {
            status
        },
    }
}
