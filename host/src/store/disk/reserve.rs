//! The disk-full reserve: room on the state's file system held by a file
//! of zeros, given up when the disk fills so that deletes can still commit
//! and make room, and taken back once there is room again.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Space held back on the state's file system for deletes on a full disk.
pub const RESERVE_BYTES: u64 = 8 << 20;

/// Room on the state's file system held by a file of zeros (a ballast),
/// given up when the disk fills so that deletes can commit.
pub struct Reserve {
    pub path: PathBuf,
}

impl Reserve {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Makes the reserve whole. Written, not sized: a sparse file holds no room.
    pub fn fill(&self) -> std::io::Result<()> {
        if std::fs::metadata(&self.path).is_ok_and(|meta| meta.len() == RESERVE_BYTES) {
            return Ok(());
        }
        let written = (|| {
            let mut file = File::create(&self.path)?;
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..RESERVE_BYTES / chunk.len() as u64 {
                file.write_all(&chunk)?;
            }
            file.sync_all()
        })();
        if written.is_err() {
            self.release();
        }
        written
    }

    pub fn release(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Free bytes on the reserve's file system (0 if unknown).
    #[allow(
        clippy::unnecessary_cast,
        reason = "statvfs field types vary by platform"
    )]
    pub fn free_bytes(&self) -> u64 {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        nix::sys::statvfs::statvfs(dir).map_or(0, |stat| {
            (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64)
        })
    }
}
