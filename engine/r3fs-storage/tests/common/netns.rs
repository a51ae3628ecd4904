//! Network namespaces for partition tests: one Linux bridge in the test's own namespace (which
//! holds address `.1` and runs the test's clients), and one namespace per daemon joined to the
//! bridge by a veth pair, with address `.<index>`. [`Net::block`] drops every packet a namespace
//! sends to one address (a `blackhole` route: silent loss, like a cut cable); [`Net::unblock`]
//! heals it. Everything is deleted on drop, also when the test panics. Needs root and `ip`;
//! [`Net::create`] says why when it cannot run, so the caller skips with that reason.

pub struct Net {
    /// Prefix of every name made here (unique per process).
    prefix: String,
    /// The /24 used: 10.213.<subnet>.0.
    subnet: u8,
    bridge: String,
    namespaces: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    super::run("ip", args)
}

impl Net {
    /// Creates the bridge. Err(reason) when this machine cannot (not root, no `ip`, no netns or
    /// bridge support).
    pub fn create() -> Result<Net, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN".into());
        }
        let pid = std::process::id();
        let prefix = format!("r3p{}", pid % 100_000);
        let subnet = 100 + (pid % 150) as u8;
        let bridge = format!("{prefix}br");
        let net = Net { prefix, subnet, bridge, namespaces: Vec::new() };
        ip(&["link", "add", "name", &net.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", net.address(1)), "dev", &net.bridge])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    /// The address of index `index` (1 is the test's own namespace, on the bridge).
    pub fn address(&self, index: u8) -> String {
        format!("10.213.{}.{index}", self.subnet)
    }

    pub fn namespace(&self, index: u8) -> String {
        format!("{}-{index}", self.prefix)
    }

    /// Adds namespace `index` (2..=254) with a veth to the bridge; returns its address.
    pub fn add(&mut self, index: u8) -> Result<String, String> {
        assert!((2..=254).contains(&index), "namespace index {index}");
        let ns = self.namespace(index);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        let host_end = format!("{}h{index}", self.prefix);
        let ns_end = format!("{}n{index}", self.prefix);
        ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end])?;
        ip(&["link", "set", &ns_end, "netns", &ns])?;
        ip(&["link", "set", &host_end, "master", &self.bridge])?;
        ip(&["link", "set", &host_end, "up"])?;
        let address = self.address(index);
        ip(&["-n", &ns, "addr", "add", &format!("{address}/24"), "dev", &ns_end])?;
        ip(&["-n", &ns, "link", "set", &ns_end, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(address)
    }

    /// Namespace `index` silently drops everything it sends to `to` (so no TCP exchange with `to`
    /// completes in either direction).
    pub fn block(&self, index: u8, to: &str) {
        let ns = self.namespace(index);
        ip(&["-n", &ns, "route", "add", "blackhole", &format!("{to}/32")]).expect("add route");
    }

    pub fn unblock(&self, index: u8, to: &str) {
        let ns = self.namespace(index);
        ip(&["-n", &ns, "route", "del", "blackhole", &format!("{to}/32")]).expect("del route");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the peer on the bridge.
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("cleanup: {e}");
        }
    }
}
