//! The disk-full reserve: room on the state's file system held by a file
//! of zeros, given up when the disk fills so that deletes can still commit
//! and make room, and taken back once there is room again.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Space held back on the state's file system for deletes on a full disk,
/// at most: 8 MiB, or a sixteenth of a smaller file system's size, so that
/// the reserve (and the room to take it back, twice its size) fits even on
/// a file system of a few MiB.
const MAX_RESERVE_BYTES: u64 = 8 << 20;
const FILE_SYSTEM_SHARE: u64 = 16;

/// Room on the state's file system held by a file of zeros (a ballast),
/// given up when the disk fills so that deletes can commit.
pub struct Reserve {
    pub path: PathBuf,
    bytes: u64,
}

impl Reserve {
    /// A reserve at `path`, sized for the file system it is on.
    pub fn new(path: PathBuf) -> Self {
        let bytes = reserve_for(file_system_bytes(&path));
        Self { path, bytes }
    }

    /// The room it holds when whole.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Makes the reserve whole. Written, not sized: a sparse file holds no room.
    pub fn fill(&self) -> std::io::Result<()> {
        if std::fs::metadata(&self.path).is_ok_and(|meta| meta.len() == self.bytes) {
            return Ok(());
        }
        let written = (|| {
            let mut file = File::create(&self.path)?;
            let chunk = vec![0u8; 1 << 20];
            let mut left = self.bytes;
            while left > 0 {
                let now = left.min(chunk.len() as u64);
                file.write_all(&chunk[..now as usize])?;
                left -= now;
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
        statvfs_of(&self.path).map_or(0, |stat| {
            blocks(stat.blocks_available() as u64, stat.fragment_size() as u64)
        })
    }
}

/// The reserve for a file system of `total` bytes (`None`: unknown).
fn reserve_for(total: Option<u64>) -> u64 {
    total.map_or(MAX_RESERVE_BYTES, |total| {
        (total / FILE_SYSTEM_SHARE).clamp(4096, MAX_RESERVE_BYTES)
    })
}

/// The size of the file system `path` is on.
#[allow(
    clippy::unnecessary_cast,
    reason = "statvfs field types vary by platform"
)]
fn file_system_bytes(path: &Path) -> Option<u64> {
    let stat = statvfs_of(path).ok()?;
    Some(blocks(stat.blocks() as u64, stat.fragment_size() as u64))
}

fn statvfs_of(path: &Path) -> nix::Result<nix::sys::statvfs::Statvfs> {
    nix::sys::statvfs::statvfs(path.parent().unwrap_or(Path::new(".")))
}

fn blocks(count: u64, size: u64) -> u64 {
    count.saturating_mul(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_scaled_to_a_small_file_system() {
        assert_eq!(reserve_for(None), 8 << 20);
        assert_eq!(reserve_for(Some(1 << 40)), 8 << 20);
        assert_eq!(reserve_for(Some(2 << 20)), 128 << 10);
        assert_eq!(reserve_for(Some(16 << 10)), 4096);
    }
}
