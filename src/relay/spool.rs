//! The spool: accepted webhooks on disk until the vendor answers 2xx.
//!
//! # Format, and why it is crash-safe
//!
//! `spool_dir/<relay>/<seq>.evt`, one file per event, `seq` a 16-digit hex number increasing
//! across the spool (per-relay order = `seq` order). A file is
//!
//! ```text
//! wgbroker-event 1\n
//! {"received_ms":..,"event":..,"delivery":..,"headers":[["Name","base64 value"],..],"body_len":N}\n
//! <N body bytes, exactly as received>
//! ```
//!
//! An event is written to `.tmp-<seq>` in the relay's directory, `fsync`ed, renamed to
//! `<seq>.evt`, and the directory is `fsync`ed — only then is the `202` sent. A crash before the
//! rename leaves a `.tmp-*` file, which [`Spool::open`] deletes (the SCM got no `202`, it will
//! retry); a crash after it leaves a complete file (rename is atomic, and both the data and the
//! directory entry were made durable). A final file that does not parse — a disk that lied about
//! `fsync`, an operator's edit — is renamed to `<seq>.corrupt`, logged by the caller and kept for
//! inspection, never delivered and never silently deleted.
//!
//! Why not one append-only log: deleting a delivered event is one `unlink` (no compaction, no
//! index to keep consistent), a torn write can only ever affect a file that was never
//! acknowledged, and an operator can see, copy or replay events with `ls` and `cat`. Webhooks
//! come at tens per second, not millions: a file and two `fsync`s each is affordable.
//!
//! Delivered events are `unlink`ed without an `fsync` of the directory: after a crash the file
//! may reappear and be delivered again, which at-least-once allows (the vendor de-duplicates on
//! the delivery id).
//!
//! The I/O is blocking `std::fs`: the runtime calls it from the outbound listener's own thread
//! (never a data-plane executor) and from the delivery task for reads of one event at a time.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8] = b"wgbroker-event 1\n";
/// Longest metadata line read back (headers of an event are a few hundred bytes).
const MAX_META: usize = 64 << 10;

/// One accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When the broker accepted it (Unix milliseconds).
    pub received_ms: u64,
    pub event: Option<String>,
    pub delivery: Option<String>,
    /// The headers forwarded to the vendor.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    received_ms: u64,
    event: Option<String>,
    delivery: Option<String>,
    headers: Vec<(String, String)>,
    body_len: u64,
}

impl Event {
    /// The file contents.
    fn encode(&self) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let meta = Meta {
            received_ms: self.received_ms,
            event: self.event.clone(),
            delivery: self.delivery.clone(),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), b64.encode(v)))
                .collect(),
            body_len: self.body.len() as u64,
        };
        let meta = serde_json::to_vec(&meta).unwrap_or_default();
        let mut out = Vec::with_capacity(MAGIC.len() + meta.len() + 1 + self.body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&meta);
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    /// Parses file contents; `None` when they are not a complete event.
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let nl = rest.iter().take(MAX_META).position(|&b| b == b'\n')?;
        let meta: Meta = serde_json::from_slice(&rest[..nl]).ok()?;
        let body = &rest[nl + 1..];
        if body.len() as u64 != meta.body_len {
            return None;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let headers = meta
            .headers
            .into_iter()
            .map(|(n, v)| Some((n, b64.decode(v).ok()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Event {
            received_ms: meta.received_ms,
            event: meta.event,
            delivery: meta.delivery,
            headers,
            body: body.to_vec(),
        })
    }
}

/// A spooled event's place in its relay's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// Bytes on disk.
    pub size: u64,
    pub received_ms: u64,
}

/// Why an event was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// `spool_max` would be exceeded (503 + `Retry-After`).
    #[error("the spool is full ({used} of {max} bytes used)")]
    Full { used: u64, max: u64 },
    /// The disk refused (503 too: the SCM retries, nothing was acknowledged).
    #[error("cannot write to the spool: {0}")]
    Io(#[from] io::Error),
}

/// What [`Spool::open`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Events waiting, per relay directory.
    pub pending: BTreeMap<String, usize>,
    /// Unacknowledged partial writes removed.
    pub torn: usize,
    /// Files that did not parse, renamed to `.corrupt`.
    pub corrupt: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct Index {
    used: u64,
    next_seq: u64,
    queues: BTreeMap<String, VecDeque<Entry>>,
}

/// The spool of every relay (shared between the listener and the delivery task).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max: u64,
    index: Mutex<Index>,
}

fn file_name(seq: u64) -> String {
    format!("{seq:016x}.evt")
}

fn seq_of(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".evt")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// `fsync` of a directory, so a rename or a new entry in it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating) the spool at `dir`, recovering what a previous run left: `.tmp-*` files
    /// are deleted, complete events queued in `seq` order, unreadable ones set aside. Directories
    /// of relays no longer configured are recovered too (their events count against `max`; the
    /// caller decides what to say about them).
    pub fn open(dir: &Path, max: u64) -> io::Result<(Spool, Recovery)> {
        fs::create_dir_all(dir)?;
        let mut index = Index::default();
        let mut recovery = Recovery::default();
        let mut max_seq = 0u64;
        for relay in fs::read_dir(dir)? {
            let relay = relay?;
            if !relay.file_type()?.is_dir() {
                continue;
            }
            let Some(name) = relay.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let mut entries = Vec::new();
            for f in fs::read_dir(relay.path())? {
                let f = f?;
                let fname = f.file_name();
                let Some(fname) = fname.to_str() else {
                    continue;
                };
                if fname.starts_with(".tmp-") {
                    fs::remove_file(f.path())?;
                    recovery.torn += 1;
                    continue;
                }
                let Some(seq) = seq_of(fname) else {
                    continue;
                };
                max_seq = max_seq.max(seq + 1);
                match fs::read(f.path()).ok().as_deref().and_then(Event::decode) {
                    Some(ev) => entries.push(Entry {
                        seq,
                        size: f.metadata()?.len(),
                        received_ms: ev.received_ms,
                    }),
                    None => {
                        let aside = f.path().with_extension("corrupt");
                        fs::rename(f.path(), &aside)?;
                        recovery.corrupt.push(aside);
                    }
                }
            }
            if recovery.torn > 0 || !recovery.corrupt.is_empty() {
                sync_dir(&relay.path())?;
            }
            entries.sort_by_key(|e| e.seq);
            index.used += entries.iter().map(|e| e.size).sum::<u64>();
            if !entries.is_empty() {
                recovery.pending.insert(name.clone(), entries.len());
                index.queues.insert(name, entries.into());
            }
        }
        index.next_seq = max_seq;
        Ok((
            Spool {
                dir: dir.to_owned(),
                max,
                index: Mutex::new(index),
            },
            recovery,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-updated (every update is
        // one assignment or one push/pop): go on with it.
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn relay_dir(&self, relay: &str) -> PathBuf {
        self.dir.join(relay)
    }

    /// Makes `ev` durable in `relay`'s queue; only after this returns `Ok` may the SCM be told
    /// `202`. Fails with [`AppendError::Full`] when it would not fit in `max`.
    pub fn append(&self, relay: &str, ev: &Event) -> Result<Entry, AppendError> {
        let bytes = ev.encode();
        let size = bytes.len() as u64;
        let seq = {
            let mut ix = self.lock();
            if ix.used + size > self.max {
                return Err(AppendError::Full {
                    used: ix.used,
                    max: self.max,
                });
            }
            // Reserved now, so concurrent appends cannot overfill the spool.
            ix.used += size;
            ix.next_seq += 1;
            ix.next_seq - 1
        };
        let written = self.write(relay, seq, &bytes);
        let mut ix = self.lock();
        match written {
            Ok(()) => {
                let entry = Entry {
                    seq,
                    size,
                    received_ms: ev.received_ms,
                };
                ix.queues
                    .entry(relay.to_owned())
                    .or_default()
                    .push_back(entry);
                Ok(entry)
            }
            Err(e) => {
                ix.used -= size;
                Err(e.into())
            }
        }
    }

    fn write(&self, relay: &str, seq: u64, bytes: &[u8]) -> io::Result<()> {
        let dir = self.relay_dir(relay);
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            sync_dir(&self.dir)?;
        }
        let tmp = dir.join(format!(".tmp-{seq:016x}"));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, dir.join(file_name(seq)))?;
            sync_dir(&dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The oldest event waiting for `relay`.
    pub fn head(&self, relay: &str) -> Option<Entry> {
        self.lock().queues.get(relay)?.front().copied()
    }

    /// Reads a spooled event. An event that no longer parses is set aside as `.corrupt` and
    /// dropped from the queue (the error says so; the caller logs it).
    pub fn load(&self, relay: &str, entry: Entry) -> io::Result<Event> {
        let path = self.relay_dir(relay).join(file_name(entry.seq));
        let mut bytes = Vec::with_capacity(usize::try_from(entry.size).unwrap_or(0));
        File::open(&path)?.read_to_end(&mut bytes)?;
        match Event::decode(&bytes) {
            Some(ev) => Ok(ev),
            None => {
                let aside = path.with_extension("corrupt");
                fs::rename(&path, &aside)?;
                self.forget(relay, entry);
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} does not parse; kept as {}",
                        path.display(),
                        aside.display()
                    ),
                ))
            }
        }
    }

    /// Drops a delivered event (the vendor answered 2xx).
    pub fn remove(&self, relay: &str, entry: Entry) -> io::Result<()> {
        let path = self.relay_dir(relay).join(file_name(entry.seq));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.forget(relay, entry);
        Ok(())
    }

    fn forget(&self, relay: &str, entry: Entry) {
        let mut ix = self.lock();
        if let Some(q) = ix.queues.get_mut(relay) {
            if let Some(i) = q.iter().position(|e| e.seq == entry.seq) {
                q.remove(i);
                ix.used -= entry.size;
            }
        }
    }

    /// Bytes held (the `spool_max` budget used).
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Events waiting for `relay`.
    pub fn pending(&self, relay: &str) -> usize {
        self.lock().queues.get(relay).map_or(0, VecDeque::len)
    }

    /// When the oldest waiting event of any relay was accepted (Unix ms).
    pub fn oldest_received_ms(&self) -> Option<u64> {
        self.lock()
            .queues
            .values()
            .filter_map(|q| q.front().map(|e| e.received_ms))
            .min()
    }

    /// Bytes held, events waiting, and when the oldest was accepted (Unix ms), at once.
    pub fn gauges(&self) -> (u64, u64, Option<u64>) {
        let ix = self.lock();
        let events = ix.queues.values().map(|q| q.len() as u64).sum();
        let oldest = ix
            .queues
            .values()
            .filter_map(|q| q.front().map(|e| e.received_ms))
            .min();
        (ix.used, events, oldest)
    }

    /// The relay directories holding events, by name.
    pub fn relays(&self) -> Vec<String> {
        self.lock()
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u8) -> Event {
        Event {
            received_ms: 1_700_000_000_000 + u64::from(n),
            event: Some("push".into()),
            delivery: Some(format!("d-{n}")),
            headers: vec![
                ("X-GitHub-Event".into(), b"push".to_vec()),
                ("X-Odd".into(), vec![0xff, b'\t']),
            ],
            body: vec![n; 100 + usize::from(n)],
        }
    }

    #[test]
    fn events_round_trip_through_the_file_format() {
        let e = ev(7);
        assert_eq!(Event::decode(&e.encode()), Some(e.clone()));
        let bytes = e.encode();
        // Any truncation is detected: never a shorter body delivered as if complete.
        for cut in [0, 5, MAGIC.len(), bytes.len() - 1] {
            assert_eq!(Event::decode(&bytes[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn appended_events_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, rec) = Spool::open(dir.path(), 1 << 20).expect("open");
        assert_eq!(rec, Recovery::default());
        for n in 0..3 {
            spool.append("github", &ev(n)).expect("append");
        }
        spool.append("gitlab", &ev(9)).expect("append");
        let used = spool.used();
        drop(spool);

        let (spool, rec) = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(rec.pending.get("github"), Some(&3));
        assert_eq!(rec.pending.get("gitlab"), Some(&1));
        assert_eq!(spool.used(), used);
        for n in 0..3 {
            let head = spool.head("github").expect("an event");
            assert_eq!(spool.load("github", head).expect("load"), ev(n));
            spool.remove("github", head).expect("remove");
        }
        assert_eq!(spool.head("github"), None);
        // Sequence numbers go on after the restart: a new event sorts after the old ones.
        let e = spool.append("gitlab", &ev(10)).expect("append");
        assert!(e.seq > spool.head("gitlab").expect("old").seq);
        assert_eq!(spool.oldest_received_ms(), Some(ev(9).received_ms));
    }

    #[test]
    fn torn_temporary_files_are_ignored_and_corrupt_events_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(dir.path(), 1 << 20).expect("open");
        let kept = spool.append("github", &ev(1)).expect("append");
        drop(spool);
        let relay = dir.path().join("github");
        // A crash mid-write: half an event under its temporary name.
        let half = ev(2).encode();
        fs::write(relay.join(".tmp-0000000000000005"), &half[..half.len() / 2]).expect("w");
        // A final file that lies about its length.
        fs::write(relay.join(file_name(3)), &half[..half.len() - 1]).expect("w");

        let (spool, rec) = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(rec.torn, 1);
        assert_eq!(rec.corrupt, vec![relay.join("0000000000000003.corrupt")]);
        assert!(relay.join("0000000000000003.corrupt").exists());
        assert!(!relay.join(".tmp-0000000000000005").exists());
        assert_eq!(rec.pending.get("github"), Some(&1));
        assert_eq!(spool.head("github"), Some(kept));
        assert_eq!(spool.used(), kept.size);
        // The corrupt file's sequence number is not reused.
        assert!(spool.append("github", &ev(4)).expect("append").seq > 3);
    }

    #[test]
    fn a_full_spool_refuses_and_keeps_what_it_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = ev(0).encode().len() as u64;
        let (spool, _) = Spool::open(dir.path(), 2 * size + 10).expect("open");
        spool.append("r", &ev(0)).expect("first fits");
        spool.append("r", &ev(0)).expect("second fits");
        match spool.append("r", &ev(0)) {
            Err(AppendError::Full { used, .. }) => assert_eq!(used, 2 * size),
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(spool.pending("r"), 2);
        let head = spool.head("r").expect("head");
        spool.remove("r", head).expect("remove");
        spool
            .append("r", &ev(0))
            .expect("room again after a delivery");
        assert_eq!(spool.pending("r"), 2);
    }
}
