//! Whether the state file is still the one the store opened: a file
//! deleted, replaced or moved under the server must not take writes that
//! nobody will ever read.

use std::fs::File;
use std::path::{Path, PathBuf};

use inotify::{Inotify, WatchMask};

/// The state file as opened, watched for being deleted, replaced or moved.
///
/// The kernel queues an inotify event for the file (its link count changed,
/// it moved) or its directory (moved, deleted) during the very call that
/// does it, so reading the queue before replying misses nothing done
/// before; the file itself is checked only when something happened to it.
/// (A `stat` of it on every commit, measured, cost a lone writer a sixth of
/// its latency.)
pub struct Watched {
    path: PathBuf,
    file: File,
    events: Inotify,
}

impl Watched {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let events = Inotify::init()?;
        events.watches().add(
            path,
            WatchMask::ATTRIB | WatchMask::MOVE_SELF | WatchMask::DELETE_SELF,
        )?;
        if let Some(dir) = path.parent() {
            events
                .watches()
                .add(dir, WatchMask::MOVE_SELF | WatchMask::DELETE_SELF)?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            events,
        })
    }

    /// Why the path no longer names the file the store writes, if it does not.
    pub fn check(&mut self) -> Result<(), String> {
        let mut buffer = [0u8; 1024];
        match self.events.read_events(&mut buffer) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            // Something happened to the file or its directory: look.
            Ok(_) | Err(_) => {}
        }
        let ours = nix::sys::stat::fstat(&self.file).map_err(|err| err.to_string());
        let there = nix::sys::stat::stat(&self.path).map_err(|err| err.to_string());
        match (ours, there) {
            (Ok(ours), Ok(there))
                if ours.st_nlink > 0
                    && (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino) =>
            {
                Ok(())
            }
            (_, Err(err)) => Err(format!(
                "the state file {} is gone ({err}): it was deleted or moved while the server ran",
                self.path.display()
            )),
            _ => Err(format!(
                "the state file {} was replaced by another file while the server ran",
                self.path.display()
            )),
        }
    }
}
