//! One-sided RDMA READ and WRITE between two queue pairs of this machine's first RDMA device,
//! connected through a real TCP handshake on loopback. Skips, saying why, where no device exists
//! (this project's CI kernel has no RDMA drivers).
#![cfg(feature = "rdma")]

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use r3fs_net::rdma::{Device, Link, LinkOptions, MemoryRegion, RemoteBuf, device_names};

fn device() -> Option<Arc<Device>> {
    let names = device_names().expect("list RDMA devices");
    if names.is_empty() {
        eprintln!("skipping: no RDMA device on this machine (ibv_get_device_list listed none)");
        return None;
    }
    Some(Device::open(None, 1, 0).expect("open the first RDMA device"))
}

#[test]
fn one_sided_read_and_write_move_exact_bytes() {
    let Some(device) = device() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    const LEN: usize = 1 << 20;

    // The "server" side: a region the client will read from and write into.
    let server_device = Arc::clone(&device);
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut link = Link::new(&server_device, LinkOptions::default()).expect("server link");
        link.handshake(&mut stream).expect("server handshake");
        let mut region = MemoryRegion::new(&server_device, LEN).expect("server region");
        for (i, byte) in region.as_mut_slice().iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        // Advertise the region over the control connection, then wait for "done".
        let remote = region.remote(0, LEN).expect("descriptor");
        std::io::Write::write_all(&mut stream, &remote.encode()).expect("send descriptor");
        let mut done = [0u8; 1];
        std::io::Read::read_exact(&mut stream, &mut done).expect("wait for the client");
        region.as_slice().to_vec()
    });

    let mut stream = TcpStream::connect(address).expect("connect");
    let mut link = Link::new(&device, LinkOptions::default()).expect("client link");
    link.handshake(&mut stream).expect("client handshake");
    let mut bytes = [0u8; RemoteBuf::ENCODED_LEN];
    std::io::Read::read_exact(&mut stream, &mut bytes).expect("receive descriptor");
    let remote = RemoteBuf::decode(&bytes);

    let mut local = MemoryRegion::new(&device, LEN).expect("client region");
    link.read(&mut local, 0, remote).expect("RDMA READ");
    assert!(local.as_slice().iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));

    local.as_mut_slice().fill(0x5A);
    let half = RemoteBuf { len: (LEN / 2) as u32, ..remote };
    link.write(&local, 0, half).expect("RDMA WRITE");
    std::io::Write::write_all(&mut stream, &[1]).expect("signal done");

    let after = server.join().expect("server thread");
    assert!(after[..LEN / 2].iter().all(|&b| b == 0x5A));
    assert!(after[LEN / 2..].iter().enumerate().all(|(i, &b)| b == ((i + LEN / 2) % 251) as u8));

    // A range past the region is refused before anything is posted.
    let error = link.write(&local, LEN - 10, RemoteBuf { len: 20, ..remote }).expect_err("range");
    assert!(error.to_string().contains("outside"), "{error}");
}

#[test]
fn open_without_a_device_names_the_fix() {
    if !device_names().expect("list RDMA devices").is_empty() {
        eprintln!("skipping: this machine has an RDMA device, so the no-device error cannot show");
        return;
    }
    let error = Device::open(None, 1, 0).expect_err("no device");
    assert!(error.to_string().contains("no RDMA device"), "{error}");
}
