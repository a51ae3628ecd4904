//! ibverbs, wrapped: devices, registered memory, and reliable connected links with one-sided
//! RDMA READ and WRITE.
//!
//! Every verbs object is owned by exactly one value here and released in its `Drop`, in the order
//! verbs requires (queue pair before completion queue, memory regions and links before the
//! protection domain and context, which [`Device`] holds behind an `Arc`).
//!
//! Registered memory is pinned, so it counts against `RLIMIT_MEMLOCK`. [`MemoryRegion::new`]
//! refuses, with [`Error::MemlockTooLow`], a registration that would take the process's registered
//! bytes past the limit, instead of letting `ibv_reg_mr` fail with a bare `ENOMEM` later.

use std::ffi::CStr;
use std::io::{Read, Write};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdma_sys::{
    ibv_access_flags, ibv_ah_attr, ibv_alloc_pd, ibv_close_device, ibv_context, ibv_cq,
    ibv_create_cq, ibv_create_qp, ibv_dealloc_pd, ibv_dereg_mr, ibv_destroy_cq, ibv_destroy_qp,
    ibv_device, ibv_free_device_list, ibv_get_device_list, ibv_get_device_name, ibv_gid,
    ibv_global_route, ibv_modify_qp, ibv_mr, ibv_mtu, ibv_open_device, ibv_pd, ibv_poll_cq,
    ibv_port_attr, ibv_post_send, ibv_qp, ibv_qp_attr, ibv_qp_attr_mask, ibv_qp_init_attr,
    ibv_qp_state, ibv_qp_type, ibv_query_gid, ibv_reg_mr, ibv_send_flags, ibv_send_wr, ibv_sge,
    ibv_wc, ibv_wc_status, ibv_wr_opcode, rdma_t, wr_t,
};

/// What can go wrong setting up or using RDMA.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no RDMA device found (ibv_get_device_list listed none): load the driver for the NIC \
         (e.g. mlx5_ib) or rdma_rxe for RoCE over Ethernet, and check /dev/infiniband"
    )]
    NoDevice,
    #[error("RDMA device {0:?} not found (devices: {1})")]
    UnknownDevice(String, String),
    #[error(
        "registering {requested} bytes would pin {total} bytes, more than RLIMIT_MEMLOCK \
         ({limit} bytes): raise the limit (`ulimit -l`, LimitMEMLOCK= in the systemd unit) or \
         register smaller buffers"
    )]
    MemlockTooLow { requested: u64, total: u64, limit: u64 },
    #[error("{call} failed: {source}")]
    Verbs { call: &'static str, source: std::io::Error },
    #[error("{op} completed with status {status} (vendor error {vendor_err:#x})")]
    Completion { op: &'static str, status: u32, vendor_err: u32 },
    #[error("{op} did not complete within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("range {offset}+{len} is outside the {size}-byte region")]
    OutOfRange { offset: usize, len: usize, size: usize },
    #[error("remote buffer of {remote} bytes does not match the {local}-byte local range")]
    LengthMismatch { local: usize, remote: u32 },
    #[error("endpoint handshake: {0}")]
    Handshake(std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

fn verbs(call: &'static str) -> Error {
    Error::Verbs { call, source: std::io::Error::last_os_error() }
}

fn verbs_rc(call: &'static str, rc: i32) -> Result<()> {
    // Verbs calls return 0 or an errno value (some return -1 and set errno).
    match rc {
        0 => Ok(()),
        -1 => Err(verbs(call)),
        errno => Err(Error::Verbs { call, source: std::io::Error::from_raw_os_error(errno) }),
    }
}

/// The names of the RDMA devices on this machine (empty when there are none).
pub fn device_names() -> Result<Vec<String>> {
    let mut count = 0;
    // SAFETY: `count` is a valid out-pointer; the list is freed below.
    let list = unsafe { ibv_get_device_list(&mut count) };
    if list.is_null() {
        // No provider or no uverbs devices at all: the same answer as an empty list.
        return Ok(Vec::new());
    }
    let names = (0..usize::try_from(count).unwrap_or(0))
        .map(|i| {
            // SAFETY: `list` holds `count` valid device pointers.
            unsafe { device_name(*list.add(i)) }
        })
        .collect();
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { ibv_free_device_list(list) };
    Ok(names)
}

/// # Safety
/// `device` must be a valid device pointer from `ibv_get_device_list`.
unsafe fn device_name(device: *mut ibv_device) -> String {
    // SAFETY: the caller guarantees a valid device; the name is a NUL-terminated C string.
    let name = unsafe { ibv_get_device_name(device) };
    if name.is_null() {
        return String::from("?");
    }
    // SAFETY: non-null, NUL-terminated, valid while the device list lives.
    unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
}

/// An opened device port: context, protection domain and the port's addressing.
#[derive(Debug)]
pub struct Device {
    name: String,
    context: NonNull<ibv_context>,
    pd: NonNull<ibv_pd>,
    port: u8,
    lid: u16,
    gid: [u8; 16],
    gid_index: u8,
}

// SAFETY: verbs contexts and protection domains are thread-safe (libibverbs locks internally);
// the raw pointers are only passed back to verbs.
unsafe impl Send for Device {}
// SAFETY: as above; no method mutates Rust-side state.
unsafe impl Sync for Device {}

impl Device {
    /// Opens `name` (or the first device when `None`) at `port` (1-based), addressing peers with
    /// the GID at `gid_index` (RoCE needs a GID; InfiniBand uses the LID and GID 0).
    pub fn open(name: Option<&str>, port: u8, gid_index: u8) -> Result<Arc<Device>> {
        let mut count = 0;
        // SAFETY: valid out-pointer; freed below on every path.
        let list = unsafe { ibv_get_device_list(&mut count) };
        if list.is_null() || count <= 0 {
            if !list.is_null() {
                // SAFETY: from ibv_get_device_list, freed once.
                unsafe { ibv_free_device_list(list) };
            }
            return Err(Error::NoDevice);
        }
        let devices: Vec<*mut ibv_device> = (0..usize::try_from(count).unwrap_or(0))
            // SAFETY: `list` holds `count` device pointers.
            .map(|i| unsafe { *list.add(i) })
            .collect();
        let chosen = match name {
            None => Some(devices[0]),
            // SAFETY: each pointer is a valid device from the list.
            Some(wanted) => devices.iter().copied().find(|&d| unsafe { device_name(d) } == wanted),
        };
        let Some(device) = chosen else {
            // SAFETY: valid devices from the list.
            let all: Vec<String> = devices.iter().map(|&d| unsafe { device_name(d) }).collect();
            // SAFETY: from ibv_get_device_list, freed once.
            unsafe { ibv_free_device_list(list) };
            return Err(Error::UnknownDevice(name.unwrap_or_default().into(), all.join(", ")));
        };
        // SAFETY: a valid device from the list (opening keeps its own reference).
        let device_name = unsafe { device_name(device) };
        // SAFETY: as above.
        let context = unsafe { ibv_open_device(device) };
        // SAFETY: from ibv_get_device_list, freed once; the opened context stays valid.
        unsafe { ibv_free_device_list(list) };
        let context = NonNull::new(context).ok_or_else(|| verbs("ibv_open_device"))?;
        let close = |error: Error| {
            // SAFETY: the context was opened above and is not used after this.
            unsafe { ibv_close_device(context.as_ptr()) };
            error
        };
        // SAFETY: a zeroed ibv_port_attr is a valid out-buffer.
        let mut port_attr: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: valid context and out-buffer.
        let rc = unsafe { rdma_sys::___ibv_query_port(context.as_ptr(), port, &mut port_attr) };
        verbs_rc("ibv_query_port", rc).map_err(close)?;
        // SAFETY: a zeroed ibv_gid is a valid out-buffer.
        let mut gid: ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: valid context and out-buffer.
        let rc = unsafe { ibv_query_gid(context.as_ptr(), port, i32::from(gid_index), &mut gid) };
        verbs_rc("ibv_query_gid", rc).map_err(close)?;
        // SAFETY: valid context.
        let pd = unsafe { ibv_alloc_pd(context.as_ptr()) };
        let pd = NonNull::new(pd).ok_or_else(|| close(verbs("ibv_alloc_pd")))?;
        Ok(Arc::new(Device {
            name: device_name,
            context,
            pd,
            port,
            lid: port_attr.lid,
            // SAFETY: every bit pattern of the union is a valid byte array.
            gid: unsafe { gid.raw },
            gid_index,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: every region and link holds an Arc<Device>, so nothing uses the PD or context
        // any more; each is released once.
        unsafe {
            ibv_dealloc_pd(self.pd.as_ptr());
            ibv_close_device(self.context.as_ptr());
        }
    }
}

/// Bytes registered (pinned) by this process, checked against RLIMIT_MEMLOCK.
static REGISTERED_BYTES: AtomicU64 = AtomicU64::new(0);

/// The soft RLIMIT_MEMLOCK in bytes, `None` when unlimited.
pub fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out-pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Reserves `len` bytes of the memlock budget, or says why not.
fn reserve_memlock(len: u64, limit: Option<u64>) -> Result<()> {
    let mut current = REGISTERED_BYTES.load(Ordering::Relaxed);
    loop {
        let total = current + len;
        if let Some(limit) = limit
            && total > limit
        {
            return Err(Error::MemlockTooLow { requested: len, total, limit });
        }
        match REGISTERED_BYTES.compare_exchange(current, total, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => return Ok(()),
            Err(now) => current = now,
        }
    }
}

fn release_memlock(len: u64) {
    REGISTERED_BYTES.fetch_sub(len, Ordering::AcqRel);
}

/// Where a peer may read or write with one-sided RDMA: address, key and length of a range of one
/// of its registered regions. Sent over the TCP control connection inside a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteBuf {
    pub addr: u64,
    pub rkey: u32,
    pub len: u32,
}

impl RemoteBuf {
    pub const ENCODED_LEN: usize = 16;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.addr.to_be_bytes());
        out[8..12].copy_from_slice(&self.rkey.to_be_bytes());
        out[12..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8; Self::ENCODED_LEN]) -> RemoteBuf {
        let word = |range: std::ops::Range<usize>| {
            bytes[range].iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        };
        RemoteBuf {
            addr: word(0..8),
            rkey: u32::try_from(word(8..12)).unwrap_or(u32::MAX),
            len: u32::try_from(word(12..16)).unwrap_or(u32::MAX),
        }
    }
}

/// A page-aligned buffer registered with the device for local access and remote READ and WRITE.
#[derive(Debug)]
pub struct MemoryRegion {
    /// Keeps the protection domain alive while registered.
    _device: Arc<Device>,
    mr: NonNull<ibv_mr>,
    buf: NonNull<u8>,
    len: usize,
}

// SAFETY: the region owns its buffer; verbs MRs may be used from any thread.
unsafe impl Send for MemoryRegion {}

const PAGE_BYTES: usize = 4096;

impl MemoryRegion {
    /// Allocates and registers `len` bytes (zeroed), within the memlock budget.
    pub fn new(device: &Arc<Device>, len: usize) -> Result<MemoryRegion> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), PAGE_BYTES)
            .map_err(|_| Error::OutOfRange { offset: 0, len, size: 0 })?;
        reserve_memlock(len as u64, memlock_limit())?;
        // SAFETY: a non-zero-sized layout.
        let buf = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) });
        let Some(buf) = buf else {
            release_memlock(len as u64);
            std::alloc::handle_alloc_error(layout);
        };
        let access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE;
        // SAFETY: a valid PD and a buffer of `len` bytes that outlives the registration.
        let mr =
            unsafe { ibv_reg_mr(device.pd.as_ptr(), buf.as_ptr().cast(), len, access.0 as i32) };
        match NonNull::new(mr) {
            Some(mr) => Ok(MemoryRegion { _device: Arc::clone(device), mr, buf, len }),
            None => {
                let error = verbs("ibv_reg_mr");
                // SAFETY: allocated above with this layout, not registered.
                unsafe { std::alloc::dealloc(buf.as_ptr(), layout) };
                release_memlock(len as u64);
                Err(error)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `buf` holds `len` initialized (zeroed at allocation) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_ptr(), self.len) }
    }

    /// The descriptor a peer needs to read or write `offset..offset + len` of this region.
    pub fn remote(&self, offset: usize, len: usize) -> Result<RemoteBuf> {
        self.check(offset, len)?;
        let len =
            u32::try_from(len).map_err(|_| Error::OutOfRange { offset, len, size: self.len })?;
        Ok(RemoteBuf {
            addr: self.buf.as_ptr() as u64 + offset as u64,
            // SAFETY: a registered MR.
            rkey: unsafe { self.mr.as_ref() }.rkey,
            len,
        })
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size: self.len }),
        }
    }

    fn sge(&self, offset: usize, len: usize) -> Result<ibv_sge> {
        self.check(offset, len)?;
        Ok(ibv_sge {
            addr: self.buf.as_ptr() as u64 + offset as u64,
            length: u32::try_from(len).map_err(|_| Error::OutOfRange {
                offset,
                len,
                size: self.len,
            })?,
            // SAFETY: a registered MR.
            lkey: unsafe { self.mr.as_ref() }.lkey,
        })
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered in `new`, deregistered once; then the buffer is freed with the layout
        // it was allocated with.
        unsafe {
            ibv_dereg_mr(self.mr.as_ptr());
            let layout = std::alloc::Layout::from_size_align_unchecked(self.len.max(1), PAGE_BYTES);
            std::alloc::dealloc(self.buf.as_ptr(), layout);
        }
        release_memlock(self.len as u64);
    }
}

/// What a peer needs to connect a queue pair to ours; exchanged over the TCP control connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub lid: u16,
    pub qp_num: u32,
    pub psn: u32,
    pub gid: [u8; 16],
}

impl Endpoint {
    pub const ENCODED_LEN: usize = 26;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0; Self::ENCODED_LEN];
        out[..2].copy_from_slice(&self.lid.to_be_bytes());
        out[2..6].copy_from_slice(&self.qp_num.to_be_bytes());
        out[6..10].copy_from_slice(&self.psn.to_be_bytes());
        out[10..].copy_from_slice(&self.gid);
        out
    }

    pub fn decode(bytes: &[u8; Self::ENCODED_LEN]) -> Endpoint {
        let mut gid = [0; 16];
        gid.copy_from_slice(&bytes[10..]);
        Endpoint {
            lid: u16::from_be_bytes([bytes[0], bytes[1]]),
            qp_num: u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]),
            psn: u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]),
            gid,
        }
    }
}

/// Settings of a link.
#[derive(Clone, Copy, Debug)]
pub struct LinkOptions {
    /// Work requests in flight at most (send queue and completion queue depth).
    pub depth_max: u32,
    /// How long one operation may take before it is reported as timed out.
    pub completion_timeout: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions { depth_max: 64, completion_timeout: Duration::from_secs(5) }
    }
}

/// One reliable connected queue pair with its completion queue.
#[derive(Debug)]
pub struct Link {
    device: Arc<Device>,
    cq: NonNull<ibv_cq>,
    qp: NonNull<ibv_qp>,
    local: Endpoint,
    options: LinkOptions,
    next_wr_id: u64,
}

// SAFETY: a link is used by one thread at a time (`&mut self` for every operation).
unsafe impl Send for Link {}

impl Link {
    /// Creates the queue pair (in INIT state); [`Link::connect`] or [`Link::handshake`] finish it.
    pub fn new(device: &Arc<Device>, options: LinkOptions) -> Result<Link> {
        let depth = i32::try_from(options.depth_max).unwrap_or(i32::MAX);
        // SAFETY: a valid context; no completion channel (the link polls).
        let cq = unsafe {
            ibv_create_cq(device.context.as_ptr(), depth, ptr::null_mut(), ptr::null_mut(), 0)
        };
        let cq = NonNull::new(cq).ok_or_else(|| verbs("ibv_create_cq"))?;
        // SAFETY: a zeroed init attr is valid; the fields that matter are set below.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq.as_ptr();
        init.recv_cq = cq.as_ptr();
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        init.cap.max_send_wr = options.depth_max;
        init.cap.max_recv_wr = 1;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        init.sq_sig_all = 1;
        // SAFETY: valid PD and init attr.
        let qp = unsafe { ibv_create_qp(device.pd.as_ptr(), &mut init) };
        let Some(qp) = NonNull::new(qp) else {
            let error = verbs("ibv_create_qp");
            // SAFETY: created above, unused.
            unsafe { ibv_destroy_cq(cq.as_ptr()) };
            return Err(error);
        };
        let mut link = Link {
            device: Arc::clone(device),
            cq,
            qp,
            local: Endpoint {
                lid: device.lid,
                // SAFETY: a created QP.
                qp_num: unsafe { qp.as_ref() }.qp_num,
                psn: rand_psn(),
                gid: device.gid,
            },
            options,
            next_wr_id: 1,
        };
        // SAFETY: zeroed attr, fields set below.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = device.port;
        attr.qp_access_flags = (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
            .0;
        let mask = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
            | ibv_qp_attr_mask::IBV_QP_PORT
            | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS;
        link.modify(&mut attr, mask, "ibv_modify_qp(INIT)")?;
        Ok(link)
    }

    /// Our side of the handshake.
    pub fn local_endpoint(&self) -> Endpoint {
        self.local
    }

    /// Connects to the peer's queue pair: INIT -> RTR -> RTS.
    pub fn connect(&mut self, remote: Endpoint) -> Result<()> {
        // SAFETY: zeroed attr, fields set below.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = ibv_mtu::IBV_MTU_1024;
        attr.dest_qp_num = remote.qp_num;
        attr.rq_psn = remote.psn;
        attr.max_dest_rd_atomic = 16;
        attr.min_rnr_timer = 12;
        let roce = remote.lid == 0;
        attr.ah_attr = ibv_ah_attr {
            grh: ibv_global_route {
                dgid: ibv_gid { raw: remote.gid },
                flow_label: 0,
                sgid_index: self.device.gid_index,
                hop_limit: 1,
                traffic_class: 0,
            },
            dlid: remote.lid,
            sl: 0,
            src_path_bits: 0,
            static_rate: 0,
            is_global: u8::from(roce),
            port_num: self.device.port,
        };
        let mask = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_AV
            | ibv_qp_attr_mask::IBV_QP_PATH_MTU
            | ibv_qp_attr_mask::IBV_QP_DEST_QPN
            | ibv_qp_attr_mask::IBV_QP_RQ_PSN
            | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
            | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER;
        self.modify(&mut attr, mask, "ibv_modify_qp(RTR)")?;

        // SAFETY: zeroed attr, fields set below.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTS;
        attr.sq_psn = self.local.psn;
        attr.timeout = 14;
        attr.retry_cnt = 7;
        attr.rnr_retry = 7;
        attr.max_rd_atomic = 16;
        let mask = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_SQ_PSN
            | ibv_qp_attr_mask::IBV_QP_TIMEOUT
            | ibv_qp_attr_mask::IBV_QP_RETRY_CNT
            | ibv_qp_attr_mask::IBV_QP_RNR_RETRY
            | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(&mut attr, mask, "ibv_modify_qp(RTS)")
    }

    /// Exchanges endpoints over a control stream (both sides call it) and connects.
    pub fn handshake<S: Read + Write>(&mut self, stream: &mut S) -> Result<Endpoint> {
        stream.write_all(&self.local.encode()).map_err(Error::Handshake)?;
        stream.flush().map_err(Error::Handshake)?;
        let mut bytes = [0; Endpoint::ENCODED_LEN];
        stream.read_exact(&mut bytes).map_err(Error::Handshake)?;
        let remote = Endpoint::decode(&bytes);
        self.connect(remote)?;
        Ok(remote)
    }

    /// One-sided READ: copies the peer's `remote` range into `local[offset..]`.
    pub fn read(
        &mut self,
        local: &mut MemoryRegion,
        offset: usize,
        remote: RemoteBuf,
    ) -> Result<()> {
        let sge = local.sge(offset, remote.len as usize)?;
        self.run(ibv_wr_opcode::IBV_WR_RDMA_READ, sge, remote, "RDMA READ")
    }

    /// One-sided WRITE: copies `local[offset..offset + remote.len]` into the peer's `remote` range.
    pub fn write(&mut self, local: &MemoryRegion, offset: usize, remote: RemoteBuf) -> Result<()> {
        let sge = local.sge(offset, remote.len as usize)?;
        self.run(ibv_wr_opcode::IBV_WR_RDMA_WRITE, sge, remote, "RDMA WRITE")
    }

    fn run(
        &mut self,
        opcode: rdma_sys::ibv_wr_opcode::Type,
        mut sge: ibv_sge,
        remote: RemoteBuf,
        op: &'static str,
    ) -> Result<()> {
        if sge.length != remote.len {
            return Err(Error::LengthMismatch { local: sge.length as usize, remote: remote.len });
        }
        let wr_id = self.next_wr_id;
        self.next_wr_id += 1;
        // SAFETY: zeroed work request, fields set below.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = opcode;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.wr = wr_t { rdma: rdma_t { remote_addr: remote.addr, rkey: remote.rkey } };
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: a connected QP; `wr` and `sge` live until the completion is polled below (the
        // local buffer is borrowed by the caller for the whole call).
        let rc = unsafe { ibv_post_send(self.qp.as_ptr(), &mut wr, &mut bad) };
        verbs_rc("ibv_post_send", rc)?;
        self.wait(wr_id, op)
    }

    /// Polls the completion queue until `wr_id` completes (operations are issued one at a time).
    fn wait(&mut self, wr_id: u64, op: &'static str) -> Result<()> {
        let deadline = Instant::now() + self.options.completion_timeout;
        loop {
            // SAFETY: a zeroed work completion is a valid out-buffer.
            let mut wc: ibv_wc = unsafe { std::mem::zeroed() };
            // SAFETY: a valid CQ and one out-slot.
            let polled = unsafe { ibv_poll_cq(self.cq.as_ptr(), 1, &mut wc) };
            if polled < 0 {
                return Err(Error::Verbs {
                    call: "ibv_poll_cq",
                    source: std::io::Error::from_raw_os_error(-polled),
                });
            }
            if polled == 1 && wc.wr_id == wr_id {
                return if wc.status == ibv_wc_status::IBV_WC_SUCCESS {
                    Ok(())
                } else {
                    Err(Error::Completion { op, status: wc.status, vendor_err: wc.vendor_err })
                };
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout { op, timeout: self.options.completion_timeout });
            }
            std::hint::spin_loop();
        }
    }

    fn modify(
        &mut self,
        attr: &mut ibv_qp_attr,
        mask: ibv_qp_attr_mask,
        call: &'static str,
    ) -> Result<()> {
        // SAFETY: a valid QP and attribute struct.
        let rc = unsafe { ibv_modify_qp(self.qp.as_ptr(), attr, mask.0 as i32) };
        verbs_rc(call, rc)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // SAFETY: created in `new`; the QP goes before the CQ it uses, each once.
        unsafe {
            ibv_destroy_qp(self.qp.as_ptr());
            ibv_destroy_cq(self.cq.as_ptr());
        }
    }
}

/// A 24-bit initial packet sequence number, different per link.
fn rand_psn() -> u32 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = NEXT.fetch_add(1, Ordering::Relaxed)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    // SplitMix64 finalizer: spreads consecutive seeds.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32 & 0x00FF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip() {
        let buf = RemoteBuf { addr: 0x1122_3344_5566_7788, rkey: 0xAABB_CCDD, len: 4 << 20 };
        assert_eq!(RemoteBuf::decode(&buf.encode()), buf);
        let endpoint = Endpoint { lid: 7, qp_num: 0x00AB_CDEF, psn: 0x12_3456, gid: [9; 16] };
        assert_eq!(Endpoint::decode(&endpoint.encode()), endpoint);
    }

    #[test]
    fn memlock_budget_refuses_past_the_limit() {
        // Own budget arithmetic, independent of other tests' registrations: reserve within a
        // limit, then one byte past it.
        let before = REGISTERED_BYTES.load(Ordering::Relaxed);
        let limit = before + 8192;
        reserve_memlock(8192, Some(limit)).expect("fits exactly");
        let error = reserve_memlock(1, Some(limit)).expect_err("one byte too many");
        assert!(error.to_string().contains("RLIMIT_MEMLOCK"), "{error}");
        release_memlock(8192);
        assert_eq!(REGISTERED_BYTES.load(Ordering::Relaxed), before);
    }
}
