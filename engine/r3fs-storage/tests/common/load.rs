//! The steady client write load the fault tests run while they break things, and the model of
//! what it had acknowledged.

use super::{pattern, write_request};
use r3fs_rpc::mgmtd_client::MgmtdClient;
use r3fs_storage::client::DataClient;
use r3fs_storage::routing::RoutingSnapshot;
use r3fs_types::{ChainId, ChunkId, ErrorCode, InodeId, PublicTargetState};
use r3fs_wire::Outcome;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The chain the load writes to.
pub const CHAIN: u32 = 1;
pub const CHUNKS: u64 = 8;
pub const WRITE_BYTES: usize = 32 << 10;
pub const OFFSETS: u64 = 16;
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that is refused for this long fails the test (the cluster never recovered).
pub const WRITE_GIVE_UP: Duration = Duration::from_secs(90);

/// The acknowledged content of every chunk, and what the client observed.
#[derive(Default)]
pub struct Model {
    pub acked: BTreeMap<ChunkId, Vec<u8>>,
    pub acks: u64,
    /// Longest time between two acknowledgements.
    pub gap_max: Duration,
    /// Attempts refused or failed, by reason.
    pub refusals: BTreeMap<String, u64>,
}

/// Writes `data` at `offset` of a chunk's modelled content, growing it with zeros.
pub fn apply(content: &mut Vec<u8>, offset: usize, data: &[u8]) {
    if content.len() < offset + data.len() {
        content.resize(offset + data.len(), 0);
    }
    content[offset..offset + data.len()].copy_from_slice(data);
}

/// mgmtd's current routing, or `None` while it cannot be reached.
pub async fn routing(admin: &MgmtdClient) -> Option<RoutingSnapshot> {
    let info = admin.get_routing_info(0, Duration::ZERO).await.ok()??;
    Some(RoutingSnapshot::from_pb(&info).0)
}

/// Writes until `stop`, each write retried (same client id and sequence) until acknowledged,
/// following the routing to whichever target heads the chain.
pub async fn writer(
    admin: MgmtdClient,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    fenced_seen: Arc<AtomicU64>,
) -> Model {
    let mut model = Model::default();
    let mut client: Option<(SocketAddr, DataClient)> = None;
    let mut last_ack = Instant::now();
    let mut cached: Option<RoutingSnapshot> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let chunk = ChunkId::new(InodeId(9), i % CHUNKS);
        let offset = ((i / CHUNKS) % OFFSETS) as usize * WRITE_BYTES;
        let data = pattern(1000 + i, WRITE_BYTES);
        let started = Instant::now();
        loop {
            assert!(started.elapsed() < WRITE_GIVE_UP, "write {i} not acknowledged in time");
            // The routing is fetched again only after a failure, as a client does.
            if cached.is_none() {
                cached = routing(&admin).await;
            }
            let Some(snapshot) = cached.clone() else {
                *model.refusals.entry("mgmtd unreachable".into()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let chain = &snapshot.chains[&ChainId(CHAIN)];
            let head = chain
                .head()
                .filter(|h| chain.state_of(*h) == Some(PublicTargetState::Serving))
                .and_then(|h| snapshot.address_of(h));
            let Some(address) = head else {
                *model.refusals.entry("no serving head".into()).or_default() += 1;
                cached = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if client.as_ref().is_none_or(|(a, _)| *a != address) {
                match tokio::time::timeout(CALL_TIMEOUT, DataClient::connect(address)).await {
                    Ok(Ok(c)) => client = Some((address, c)),
                    _ => {
                        *model.refusals.entry("connect failed".into()).or_default() += 1;
                        client = None;
                        cached = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            let Some((_, c)) = client.as_mut() else { continue };
            let request =
                write_request(CHAIN, chain.chain_version, chunk, offset as u32, &data, 7, i + 1);
            match tokio::time::timeout(CALL_TIMEOUT, c.update(request, &data)).await {
                Ok(Ok(reply)) if reply.outcome == Outcome::Ok => break,
                Ok(Ok(reply)) => {
                    let Outcome::Failed(code) = reply.outcome else { unreachable!() };
                    let expected = code.is_retryable()
                        || matches!(
                            code,
                            ErrorCode::Fenced
                                | ErrorCode::StaleChainVersion
                                | ErrorCode::TargetNotFound
                                | ErrorCode::TargetNotServing
                        );
                    assert!(expected, "write {i} refused for good: {reply:?}");
                    if code == ErrorCode::Fenced {
                        fenced_seen.fetch_add(1, Ordering::SeqCst);
                    }
                    *model.refusals.entry(format!("{code:?}")).or_default() += 1;
                    cached = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(_)) | Err(_) => {
                    *model.refusals.entry("connection lost or timed out".into()).or_default() += 1;
                    client = None;
                    cached = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        apply(model.acked.entry(chunk).or_default(), offset, &data);
        model.acks += 1;
        model.gap_max = model.gap_max.max(last_ack.elapsed());
        last_ack = Instant::now();
        acks.store(model.acks, Ordering::SeqCst);
        i += 1;
    }
    model
}

/// [`writer`] running in the background: its progress, and how to stop it.
pub struct Load {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    fenced_seen: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Model>,
}

impl Load {
    /// Starts the writer on the current runtime.
    pub fn start(admin: MgmtdClient) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let fenced_seen = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(writer(admin, stop.clone(), acks.clone(), fenced_seen.clone()));
        Load { stop, acks, fenced_seen, task }
    }

    /// Writes acknowledged so far.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::SeqCst)
    }

    /// Attempts refused with `Fenced` so far.
    pub fn fenced(&self) -> u64 {
        self.fenced_seen.load(Ordering::SeqCst)
    }

    /// Blocks until the writer has `at_least` acknowledgements (120 s at the most).
    pub fn wait_acks(&self, at_least: u64, what: &str) {
        wait_acks(&self.acks, at_least, what);
    }

    /// Stops the writer once its write in flight is acknowledged; returns its model.
    pub async fn finish(self) -> Model {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(120), self.task)
            .await
            .expect("writer stops")
            .expect("writer task")
    }
}

/// Blocks until the writer has `at_least` acknowledgements (120 s at the most).
fn wait_acks(acks: &AtomicU64, at_least: u64, what: &str) {
    let reached =
        r3fs_testkit::wait_until(Duration::from_secs(120), Duration::from_millis(5), || {
            acks.load(Ordering::SeqCst) >= at_least
        });
    assert!(reached, "writes did not reach {at_least} acknowledgements ({what})");
}
