//! RTM_GETLINK over rtnetlink, in this process's network namespace: the one
//! request that link types (`link_type::query`) and tunnel devices (`tunnels`)
//! both ask.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{RouteNetlinkMessage, link::LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Sends `request` as RTM_GETLINK (a dump of every link when `dump`, else the one
/// it names) and returns the links the kernel answers with. A netlink error is the
/// `io::Error` of its errno (ENODEV: no such link).
pub(crate) fn get_links(request: LinkMessage, dump: bool) -> io::Result<Vec<LinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut message = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(request)),
    );
    message.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
    message.header.sequence_number = 1;
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0)?;

    let mut links = Vec::new();
    // Large enough for any one message (the kernel sizes a dump's to a page or to
    // 32 KiB).
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let reply: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&buffer[offset..size])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    links.push(link);
                }
                // The end of a dump, or the ACK of a single request.
                NetlinkPayload::Done(_) => return Ok(links),
                NetlinkPayload::Error(error) => {
                    return match error.code {
                        None => Ok(links),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}
