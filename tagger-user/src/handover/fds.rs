//! Passing open sockets between the two daemons of a handover (`SCM_RIGHTS`):
//! the successor gets the very listening socket the old daemon accepted on,
//! so no connection queued on it is lost and no port is ever closed.
use std::{
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
};

/// At most this many descriptors travel in one message.
pub const MAX_FDS: usize = 4;

/// Room for the control message carrying up to [`MAX_FDS`] descriptors.
fn cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends all of `bytes` with `fds` attached to the first byte.
pub fn send_with_fds(socket: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} fds per message");
    let mut control = vec![0u8; cmsg_space()];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below points into
    // buffers (`iov`, `control`, `bytes`) that outlive the sendmsg call, and
    // the control message is written within `control`'s length, as the
    // CMSG_* macros compute it.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let data_len = std::mem::size_of_val(fds) as u32;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(data_len) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
        libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let sent = sent as usize;
    if sent < bytes.len() {
        // The descriptors went with the first part; the rest is plain.
        use std::io::Write;
        (&*socket).write_all(&bytes[sent..])?;
    }
    Ok(())
}

/// Receives into `buf` (some bytes, at least one) and the descriptors that
/// came with them.
pub fn recv_with_fds(socket: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut control = vec![0u8; cmsg_space()];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as in `send_with_fds`; recvmsg writes at most `iov_len` bytes
    // into `buf` and `msg_controllen` into `control`. MSG_CMSG_CLOEXEC: the
    // received descriptors are not leaked into children (pods' commands).
    let (received, msg) = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        let received = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        (received, msg)
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`
    // (bounded by msg_controllen); each SCM_RIGHTS payload is an array of
    // descriptors now owned by this process, wrapped once each.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize - header) / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "too many descriptors in one handover message",
        ));
    }
    Ok((received as usize, fds))
}

#[cfg(test)]
mod tests {
    use std::{io::Read, os::fd::AsFd};

    use super::*;

    #[test]
    fn a_listening_socket_crosses_and_still_accepts() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let message = vec![7u8; 100_000];
        let sender = std::thread::spawn(move || {
            send_with_fds(&a, &message, &[listener.as_fd()]).unwrap();
            // Dropping ours: the socket lives on in the receiver.
        });
        let mut buf = vec![0u8; 200_000];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        let mut rest = vec![0u8; 100_000 - n];
        (&b).read_exact(&mut rest).unwrap();
        sender.join().unwrap();
        assert!(buf[..n].iter().chain(&rest).all(|&x| x == 7));
        assert_eq!(fds.len(), 1);
        let received = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), addr);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        received.accept().unwrap();
    }
}
