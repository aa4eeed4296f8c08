//! Reads the drop samples the kernel sends (already rate limited there), logs each
//! as one structured event (with `--log-format json`, one JSON line per drop), and
//! passes each to `airlock watch` sessions on the agent's samples socket: the
//! kernel's ring has one read position, so a `watch` reading it beside the agent
//! would take samples from the log.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use tokio::{io::unix::AsyncFd, sync::broadcast, task::JoinHandle};

use crate::{
    loader::{LINK_PIN, LinkKind, PinRoot, pinned_link_state},
    samples::{DropEvent, DropRecord, open_ring},
};

/// Each drop sample as a JSON line, for the samples socket's clients.
pub type Feed = broadcast::Sender<Arc<str>>;

/// Rule names by interface, as applied by the agent.
pub type RuleNames = Arc<RwLock<BTreeMap<String, Vec<String>>>>;

/// One reader task per interface, restarted when the interface's program changes
/// (a re-install creates a new ring buffer).
pub struct Samplers {
    running: BTreeMap<String, (u32, JoinHandle<()>)>,
    feed: Feed,
}

impl Samplers {
    pub fn new(feed: Feed) -> Self {
        Samplers {
            running: BTreeMap::new(),
            feed,
        }
    }

    pub fn refresh(&mut self, root: &PinRoot, names: &RuleNames) {
        let interfaces = root.interfaces().unwrap_or_default();
        self.running.retain(|iface, (_, task)| {
            let keep = interfaces.contains(iface);
            if !keep {
                task.abort();
            }
            keep
        });
        for iface in interfaces {
            let dir = root.interface_dir(&iface);
            let Ok(link) = pinned_link_state(&dir.join(LINK_PIN), LinkKind::Xdp) else {
                continue;
            };
            if self
                .running
                .get(&iface)
                .is_some_and(|(program, task)| *program == link.program_id && !task.is_finished())
            {
                continue;
            }
            if let Some((_, old)) = self.running.remove(&iface) {
                old.abort();
            }
            let ring = match open_ring(&dir) {
                Ok(ring) => ring,
                Err(error) => {
                    tracing::warn!(iface, %error, "cannot read drop samples");
                    continue;
                }
            };
            let names = Arc::clone(names);
            let task_iface = iface.clone();
            let feed = self.feed.clone();
            // The datapath's debug/trace lines, when this agent's command line asks
            // for them (to its log, and to `watch` sessions).
            let datapath_log = (crate::loader::datapath_log() > 0)
                .then(|| {
                    let sink = crate::datapath_log::ToTracing {
                        iface: iface.clone(),
                        feed: Some(feed.clone()),
                    };
                    crate::datapath_log::open(&dir, sink)
                        .inspect_err(
                            |error| tracing::warn!(iface, %error, "cannot read the datapath log"),
                        )
                        .ok()
                })
                .flatten();
            let task = tokio::spawn(async move {
                let log_iface = task_iface.clone();
                let log = async move {
                    if let Some(logger) = datapath_log {
                        crate::datapath_log::forward(&log_iface, logger).await;
                    }
                };
                tokio::join!(read_samples(task_iface, ring, names, feed), log);
            });
            self.running.insert(iface, (link.program_id, task));
        }
    }
}

async fn read_samples(
    iface: String,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    names: RuleNames,
    feed: Feed,
) {
    // SAFETY: the ring buffer owns its descriptor, which stays open and unchanged
    // until the AsyncFd (which owns the ring) is dropped.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(error) => {
            tracing::warn!(iface, %error, "cannot poll the drop-sample ring");
            return;
        }
    };
    loop {
        let Ok(mut ready) = ring.readable_mut().await else {
            return;
        };
        let ring = ready.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(event) = DropEvent::decode(&item) else {
                continue;
            };
            let rule = event.rule.and_then(|index| {
                names
                    .read()
                    .ok()
                    .and_then(|n| n.get(&iface).and_then(|r| r.get(index as usize).cloned()))
            });
            let record = DropRecord::new(&iface, &event, rule);
            tracing::info!(
                target: "airlock::drop",
                interface = record.interface.as_str(),
                source = record.source.as_str(),
                protocol = record.protocol.as_str(),
                dst_port = record.dst_port,
                rule = record.rule.as_str(),
                reason = record.reason.as_str(),
                verdict = record.verdict.as_str(),
                "drop"
            );
            // Only while a `watch` is connected (sending to none is an error).
            if feed.receiver_count() > 0
                && let Ok(line) = serde_json::to_string(&record)
            {
                let _ = feed.send(line.into());
            }
        }
        ready.clear_ready();
    }
}
