//! What the client's data plane costs per byte, without a storage engine behind it: a sink
//! server in the same process acknowledges writes without keeping them and answers reads from a
//! static zero buffer (with its CRC32C), over loopback TCP. The client does its real work: plan,
//! CRC32C of every written byte, vectored writes, frame decoding (CRC of every read byte twice:
//! frame and item), copy into the caller's buffer, windows and batching.
//!
//! `cargo run --release -p r3fs-client --example loopback_bench -- [total_mib] [chunk_kib]`
//!
//! Client and server share the machine's cores, so the figures bound what one client process
//! can push through loopback, not what a cluster serves.

use bytes::{Bytes, BytesMut};
use r3fs_client::{ClientConfig, ClientResult, RoutingCache, RoutingSource, StorageClient};
use r3fs_rpc::mgmtd as pb;
use r3fs_types::{ChainSelection, ChainTableId, ChainTableVersion, InodeId, Layout};
use r3fs_wire::{
    BatchReadReply, BatchReadReplyItem, Decoded, FrameLimits, Message, Outcome, PayloadInfo,
    UpdateReply, decode_frame, encode_head,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CHAINS: u32 = 4;

#[derive(Debug)]
struct Static(pb::RoutingInfo);

#[async_trait::async_trait]
impl RoutingSource for Static {
    async fn fetch(&self, known: u64, wait: Duration) -> ClientResult<Option<pb::RoutingInfo>> {
        if self.0.routing_version > known {
            return Ok(Some(self.0.clone()));
        }
        tokio::time::sleep(wait).await;
        Ok(None)
    }
}

async fn sink(listener: TcpListener, zeros: Bytes) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let zeros = zeros.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (mut read, mut write) = stream.into_split();
            let mut buf = BytesMut::with_capacity(8 << 20);
            let mut crcs: HashMap<u32, u32> = HashMap::new();
            let mut head = BytesMut::new();
            loop {
                while let Ok(Decoded::Complete(frame)) =
                    decode_frame(&mut buf, &FrameLimits::DEFAULT)
                {
                    head.clear();
                    let payload = match &frame.message {
                        Message::UpdateRequest(request) => {
                            let reply = UpdateReply {
                                outcome: Outcome::Ok,
                                chunk_length: request.offset + request.length,
                                ..Default::default()
                            };
                            encode_head(
                                &mut head,
                                frame.request_id,
                                &reply.into(),
                                PayloadInfo::EMPTY,
                                &FrameLimits::DEFAULT,
                            )
                            .expect("reply encodes");
                            Bytes::new()
                        }
                        Message::BatchReadRequest(request) => {
                            let items: Vec<BatchReadReplyItem> = request
                                .items
                                .iter()
                                .map(|item| BatchReadReplyItem {
                                    outcome: Outcome::Ok,
                                    length: item.length,
                                    crc32c: *crcs.entry(item.length).or_insert_with(|| {
                                        crc32c::crc32c(&zeros[..item.length as usize])
                                    }),
                                })
                                .collect();
                            let total: usize = items.iter().map(|i| i.length as usize).sum();
                            // Items back to back are zeros too: one CRC over the total length.
                            let payload = zeros.slice(..total);
                            let crc = *crcs
                                .entry(total as u32)
                                .or_insert_with(|| crc32c::crc32c(&payload));
                            let reply = BatchReadReply { outcome: Outcome::Ok, items };
                            let info = PayloadInfo { len: total as u32, crc32c: crc };
                            encode_head(
                                &mut head,
                                frame.request_id,
                                &reply.into(),
                                info,
                                &FrameLimits::DEFAULT,
                            )
                            .expect("reply encodes");
                            payload
                        }
                        other => panic!("unexpected {other:?}"),
                    };
                    if write.write_all(&head).await.is_err()
                        || write.write_all(&payload).await.is_err()
                    {
                        return;
                    }
                }
                buf.reserve(1 << 20);
                match read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ClientResult<()> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let total_mib = args.first().copied().unwrap_or(1024);
    let chunk_kib = args.get(1).copied().unwrap_or(1024);
    let chunk_size = u32::try_from(chunk_kib << 10).expect("chunk size fits u32");
    let zeros = Bytes::from(vec![0u8; 64 << 20]);

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(sink(listener, zeros));
    let info = pb::RoutingInfo {
        routing_version: 1,
        nodes: vec![pb::NodeInfo {
            node_id: 1,
            addresses: vec![pb::ServiceAddress {
                name: "data/0".into(),
                address: address.to_string(),
            }],
            ..Default::default()
        }],
        chain_tables: vec![pb::ChainTable {
            table_id: 1,
            version: 1,
            chain_ids: (1..=CHAINS).collect(),
            description: String::new(),
        }],
        chains: (1..=CHAINS)
            .map(|c| pb::Chain {
                chain_id: c,
                chain_version: 1,
                targets: vec![pb::ChainTarget {
                    target_id: u64::from(c),
                    public_state: pb::PublicTargetState::Serving as i32,
                }],
            })
            .collect(),
        targets: (1..=CHAINS)
            .map(|c| pb::TargetInfo {
                target_id: u64::from(c),
                node_id: 1,
                chain_id: c,
                ..Default::default()
            })
            .collect(),
    };
    let config = ClientConfig::default();
    let routing = RoutingCache::start(Arc::new(Static(info)), config.routing.clone()).await?;
    let client = StorageClient::new(config, Arc::new(routing))?;
    let layout = Layout {
        chain_table_id: ChainTableId(1),
        chain_table_version: ChainTableVersion(1),
        chunk_size,
        stripe_size: CHAINS,
        chains: ChainSelection::ShuffleV1 { seed: 1 },
    };
    let map = client.file_map(InodeId(1), &layout).await?;
    let call_bytes = 64usize << 20;
    let mut buf: Vec<u8> = (0..call_bytes).map(|i| (i % 251) as u8).collect();
    let calls = (total_mib << 20) / call_bytes as u64;

    let started = Instant::now();
    for i in 0..calls {
        client.write(&map, i * call_bytes as u64, &buf).await?;
    }
    let write = started.elapsed();
    let started = Instant::now();
    for i in 0..calls {
        client.read(&map, i * call_bytes as u64, &mut buf).await?;
    }
    let read = started.elapsed();
    assert!(buf.iter().all(|&b| b == 0), "the sink serves zeros");
    let mib = (calls * call_bytes as u64) as f64 / f64::from(1 << 20);
    println!(
        "{mib:.0} MiB in {} MiB calls, {chunk_kib} KiB chunks over {CHAINS} chains: write {:.0} MiB/s, read {:.0} MiB/s",
        call_bytes >> 20,
        mib / write.as_secs_f64(),
        mib / read.as_secs_f64()
    );
    Ok(())
}
