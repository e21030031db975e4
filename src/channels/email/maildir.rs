//! A Maildir outbox (the de-facto Maildir layout: `tmp/`, `new/`, `cur/`):
//! each mail is written to `tmp/`, synced, then renamed into `new/`, so a
//! reader never sees half a message and a crash leaves no torn file.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Maildir {
    root: PathBuf,
    counter: AtomicU64,
}

impl Maildir {
    pub fn create(root: PathBuf) -> anyhow::Result<Self> {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| {
                anyhow::anyhow!(
                    "email.outbox: cannot create {}: {e}",
                    root.join(sub).display()
                )
            })?;
        }
        Ok(Self {
            root,
            counter: AtomicU64::new(0),
        })
    }

    /// Stores one message; returns its file name.
    pub async fn deliver(&self, bytes: &[u8]) -> std::io::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seq = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}.M{}P{}Q{}.kci",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            seq
        );
        let (tmp, new) = (
            self.root.join("tmp").join(&name),
            self.root.join("new").join(&name),
        );
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &new)?;
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(name)
    }

    pub fn check(&self) -> Result<(), String> {
        std::fs::metadata(self.root.join("new"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_into_new() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::create(dir.path().join("out")).unwrap();
        let name = md.deliver(b"Subject: hi\r\n\r\nbody\r\n").await.unwrap();
        let got = std::fs::read(dir.path().join("out/new").join(name)).unwrap();
        assert_eq!(got, b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(
            std::fs::read_dir(dir.path().join("out/tmp"))
                .unwrap()
                .count(),
            0
        );
    }
}
