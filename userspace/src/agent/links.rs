//! Interface events from the kernel (rtnetlink RTMGRP_LINK): an interface deleted,
//! recreated or changed triggers a reconcile at once instead of at the next tick.

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc;

use super::Trigger;

const RTMGRP_LINK: u32 = 1;

/// Listens on a thread of its own (the socket is blocking); any message is a trigger,
/// as the reconcile itself reads the current state.
pub fn spawn_link_watcher(triggers: mpsc::Sender<Trigger>) -> std::io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    std::thread::Builder::new()
        .name("airlock-netlink".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                match socket.recv(&mut &mut buffer[..], 0) {
                    // A full channel already holds a pending reconcile.
                    Ok(_) => match triggers.try_send(Trigger::LinkChanged) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    Err(error) => {
                        tracing::warn!(%error, "netlink link events unavailable; relying on the timer");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}
