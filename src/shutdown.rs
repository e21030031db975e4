//! A shutdown signal shared by the HTTP server and the workers.
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>, watch::Receiver<bool>);

impl Default for Shutdown {
    fn default() -> Self {
        let (tx, rx) = watch::channel(false);
        Self(Arc::new(tx), rx)
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.1.borrow()
    }

    pub async fn wait(&self) {
        let mut rx = self.1.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}
