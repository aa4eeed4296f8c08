//! Reads the drop samples the kernel sends (already rate limited there) and logs each
//! as one structured event: with `--log-format json`, one JSON line per drop.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use tokio::{io::unix::AsyncFd, task::JoinHandle};

use crate::{
    loader::{LINK_PIN, LinkKind, PinRoot, pinned_link_state},
    samples::{DropEvent, open_ring},
};

/// Rule names by interface, as applied by the agent.
pub type RuleNames = Arc<RwLock<BTreeMap<String, Vec<String>>>>;

/// One reader task per interface, restarted when the interface's program changes
/// (a re-install creates a new ring buffer).
#[derive(Default)]
pub struct Samplers {
    running: BTreeMap<String, (u32, JoinHandle<()>)>,
}

impl Samplers {
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
            let task = tokio::spawn(async move { read_samples(task_iface, ring, names).await });
            self.running.insert(iface, (link.program_id, task));
        }
    }
}

async fn read_samples(
    iface: String,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    names: RuleNames,
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
            tracing::info!(
                target: "airlock::drop",
                interface = iface.as_str(),
                source = %event.source_text(),
                protocol = event.protocol_name(),
                dst_port = event.dst_port,
                rule = rule.as_deref().unwrap_or(""),
                reason = event.reason.name(),
                verdict = if event.monitor { "would_drop" } else { "dropped" },
                "drop"
            );
        }
        ready.clear_ready();
    }
}
