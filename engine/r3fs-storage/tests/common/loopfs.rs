//! A small real file system for fill-the-disk tests: an ext4 image on a loop device, mounted in a
//! temp dir, unmounted when dropped (also when the test panics). Needs root and loop devices;
//! [`LoopFs::create`] says why when it cannot run, so the caller skips with that reason.

use super::run;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

pub struct LoopFs {
    /// Where the file system is mounted (a target path for a storage daemon).
    pub mount: PathBuf,
    mounted: bool,
    /// Holds the image file and the mount point; removed after the unmount.
    dir: TempDir,
}

impl LoopFs {
    /// Creates an ext4 file system of `size_bytes` in an image file under `parent` and mounts it
    /// with `-o loop`. Err(reason) when this machine cannot (not root, no loop devices, no
    /// mkfs.ext4, no O_DIRECT on the result).
    pub fn create(parent: &Path, size_bytes: u64) -> Result<LoopFs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: mounting a loop device needs root".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("no /dev/loop-control: loop devices are unavailable".into());
        }
        let dir = tempfile::tempdir_in(parent).map_err(|e| format!("temp dir: {e}"))?;
        let image = dir.path().join("fs.img");
        let file = std::fs::File::create(&image).map_err(|e| format!("create image: {e}"))?;
        file.set_len(size_bytes).map_err(|e| format!("size image: {e}"))?;
        drop(file);
        let image_arg = image.to_str().ok_or("image path is not UTF-8")?;
        // -m 0: no blocks reserved for root (the daemon runs as root here and would otherwise
        // fill the reserve too, which a real deployment would not see).
        run("mkfs.ext4", &["-q", "-F", "-m", "0", image_arg])?;
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| format!("create mount point: {e}"))?;
        let mount_arg = mount.to_str().ok_or("mount path is not UTF-8")?;
        run("mount", &["-o", "loop", image_arg, mount_arg])?;
        let fs = LoopFs { mount, mounted: true, dir };
        fs.probe_direct_io()?;
        Ok(fs)
    }

    /// The storage daemon refuses targets without O_DIRECT: check the mounted file system takes
    /// an aligned O_DIRECT write, so a failure here is a skip reason rather than a daemon error.
    fn probe_direct_io(&self) -> Result<(), String> {
        let path = self.mount.join("direct-io-probe");
        let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
        // SAFETY: a non-zero size; freed below with the same layout.
        let buffer = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!buffer.is_null(), "allocate the probe buffer");
        // SAFETY: `buffer` is 4096 initialised bytes owned here until dealloc.
        let bytes = unsafe { std::slice::from_raw_parts(buffer, 4096) };
        let result = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .and_then(|mut f| f.write_all(bytes));
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(buffer, layout) };
        let _ = std::fs::remove_file(&path);
        result.map_err(|e| format!("O_DIRECT write on the loop file system failed: {e}"))
    }

    /// Free bytes of the file system, as statvfs reports them to an unprivileged writer.
    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.mount.to_str().expect("utf-8")).expect("c path");
        // SAFETY: statvfs writes into the zeroed struct; the path is a valid C string.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
        assert_eq!(rc, 0, "statvfs {}", self.mount.display());
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let mount = self.mount.to_str().expect("utf-8").to_string();
        // A daemon that was just killed may still hold the files for a moment.
        for _ in 0..50 {
            if run("umount", &[&mount]).is_ok() {
                self.mounted = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.mounted {
            // Detach it anyway so no mount outlives the test; the kernel frees it when unused.
            if let Err(e) = run("umount", &["-l", &mount]) {
                eprintln!("could not unmount {mount}: {e}");
            }
        }
        let _ = &self.dir;
    }
}
